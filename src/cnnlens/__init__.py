"""cnnlens: see what an image-classifying CNN looks at, and why it gets things wrong.

Pipeline, one package each, imports flowing one way:
``data -> models -> train -> explain -> evaluate / faithfulness -> viz -> report``.
"""

__version__ = "0.1.0"
