"""Sources read resources from the outside world and publish `Change`s.

Each source (`files.FileSource`, `kubernetes.KubernetesSource`) implements
`changes.Source`: its changes, its own metrics, its own problems for /readyz, the same
way whatever it reads. Sources do I/O only; applying changes is `building.py`'s, and
choosing which sources run is the command line's (`cli.sources_for`).
"""


class StartupError(Exception):
    """A source cannot start as configured (its settings are wrong, not the world): the
    command line says why and exits 2, never a traceback."""
