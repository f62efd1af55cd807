"""Drop-in replacements for other local-LLM Python packages, running on tallow.

``tallow.compat.gpt4all``: the ``GPT4All`` class of the ``gpt4all`` 2.8.2 package; change
``from gpt4all import GPT4All`` to ``from tallow.compat.gpt4all import GPT4All``.

Submodules are imported on demand, never by this package.
"""
