"""keras.ops is out of scope in minires: importing it raises an ImportError saying why."""
from .coverage import refuse_import

refuse_import(__name__)
