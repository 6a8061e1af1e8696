"""kopf handlers, one module per kind. Importing this package registers them all."""

from tunerag_operator.handlers import adapterversion, finetunejob, rolloutpolicy, vectorindex

__all__ = ["adapterversion", "finetunejob", "rolloutpolicy", "vectorindex"]
