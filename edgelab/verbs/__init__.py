"""The lab's verbs on the ``edgeagent`` command (``demo``, ``pilot``).

Found through the ``edgeagent.verbs`` entry points: the runtime never imports the lab.
"""
