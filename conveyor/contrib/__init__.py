"""Integrations of conveyor with frameworks (interfaces layer): :mod:`conveyor.contrib.django`."""
