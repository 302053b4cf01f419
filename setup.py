"""Build hook: ship the demo page (the top-level ``static/``) inside the package.

The repository keeps ``static/`` at the top level (the product's layout), but a wheel only
carries packages, so a non-editable ``pip install .`` (what a PaaS buildpack runs from
requirements.txt) used to serve 404 at ``/``. ``build_py`` below copies ``static/`` to
``coup/static/`` in the build directory, so every wheel and every non-editable install has
it next to the code; `coup.app.STATIC_DIR` looks there first and falls back to the
checkout's ``static/`` (editable installs and a bare checkout, which have no copy).

Why a build step rather than the alternatives: ``data_files`` land under ``sys.prefix``,
which the server would have to guess (user installs, virtualenvs and ``--target`` differ);
a ``coup/static`` symlink breaks on checkouts without symlinks and in some sdist tools;
moving the directory would change the repository's layout. ``MANIFEST.in`` puts
``static/`` into the sdist too, so a wheel built from the sdist has it as well.
Everything else lives in setup.cfg.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

STATIC = Path(__file__).resolve().parent / "static"


class BuildWithStatic(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install serves the checkout's static/ itself
            return
        if not (STATIC / "index.html").is_file():
            raise SystemExit(f"static/index.html is missing in {STATIC.parent}: the demo page would not be shipped")
        self.copy_tree(str(STATIC), str(Path(self.build_lib) / "coup" / "static"))


setup(cmdclass={"build_py": BuildWithStatic})
