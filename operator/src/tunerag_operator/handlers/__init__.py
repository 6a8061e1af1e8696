"""kopf handlers, one module per kind. Importing this package registers them all."""

from tunerag_operator.handlers import adapterversion, finetunejob, finetuneschedule, rolloutpolicy, vectorindex

__all__ = ["adapterversion", "finetunejob", "finetuneschedule", "rolloutpolicy", "vectorindex"]
