"""RabbitMQ behind the Transport interface: the broker's own exchanges, queues and bindings.

``amqp://user:pass@host:5672/vhost`` or ``amqps://...`` (TLS), over conveyor's own lean AMQP
0-9-1 layer (pamqp for the rarely used methods). How it works, and where:

- :mod:`.options`: the URL and the transport options.
- :mod:`.codec`, :mod:`.channel`, :mod:`.connection`: the wire layer. Frames are parsed
  straight from the receive buffer and dispatched without a task per message; everything
  written in one event-loop turn leaves in one socket write.
- :mod:`.errors`: the wire layer's errors, and conveyor's for each of them.
- :mod:`.session`: one connection, supervised. Declarations, deletes and stats go over a command
  channel; ``get`` over its own channel (so a failed declaration never requeues a message
  someone holds); publishes over one channel in confirm mode, pipelined. A channel that RabbitMQ
  closes after an error is reopened on next use. When the connection is lost the session
  reconnects with exponential backoff and jitter, declares again every exchange, queue and
  binding it declared, and resubscribes every consumer; other calls wait for the connection,
  up to ``reconnect_timeout`` seconds, and retry.
- :mod:`.declarations`: exchanges, queues and bindings, and PreconditionFailed that names both
  definitions.
- :mod:`.publishing`: every publish is sent ``mandatory`` and waits for its confirm; 1 means
  RabbitMQ routed it to one or more queues, 0 that it came back (Unroutable when the caller
  asked for ``mandatory``). Replies to direct reply-to addresses are done once written.
- :mod:`.delays`: delayed delivery with no plugin and no consumer, through a chain of delay
  levels ``conveyor.delay.NN`` whose queues expire strictly from their head.
- :mod:`.consumer` and :mod:`.acks`: a channel per consumer with ``basic.qos``; acks coalesced
  into ``multiple`` acks. Deliveries of a lost connection are dropped locally (RabbitMQ
  requeues them) and settling them is a no-op.
- :mod:`.transport`: :class:`AMQPTransport`, the verbs.
"""

from conveyor.transports.amqp.delays import DELAY_PREFIX
from conveyor.transports.amqp.publishing import DIRECT_REPLY_TO
from conveyor.transports.amqp.transport import AMQPTransport

__all__ = ["DELAY_PREFIX", "DIRECT_REPLY_TO", "AMQPTransport"]
