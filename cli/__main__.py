"""``python -m provenance.cli``: the same as the ``prov`` command."""

from provenance.cli.main import run

if __name__ == "__main__":  # pragma: no cover
    run()
