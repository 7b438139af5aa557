"""A small shop: placing an order sends a task that prices it; a signal marks the order done."""
