"""Settings as a class in a module, loaded by ``"module:Class"`` or ``"module.Class"``."""


class Config:
    broker_url = "memory://celeryconfig-object"
    task_default_queue = "default"
