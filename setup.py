"""The build steps pyproject.toml cannot declare (everything else is there).

Both C programs of umld are built by ``build_ext``, so ``pip install .``,
``pip wheel .`` and ``pip install -e .`` (what ``make install`` runs; the
editable install builds them in place) all produce them.  Sources and the
one flag set are in c_tracer/build_ffi.py.

* ``umld.tracer._c_tracer``, the cffi extension (``cffi_modules``): our own
  C (tracer.c, mem.c) is compiled first with CFLAGS and linked in as
  objects, so that -Werror and -Wconversion hold for every line we wrote
  whatever cffi generates.
* ``umld-sandbox``, an executable: compiled with the same CFLAGS and put
  into the package umld.core (in a wheel, in site-packages, or in place),
  where ``umld.core.sandbox.SANDBOX`` finds it beside sandbox.py.
* ``umld``, the command (c_tracer/front.c): compiled with the same CFLAGS
  and the path of the interpreter that builds it, and installed as the
  package's script (build_scripts runs after build_ext).
"""

from __future__ import annotations

import os
import runpy
import sys
from distutils.command.build_scripts import build_scripts
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

C = runpy.run_path(os.path.join("c_tracer", "build_ffi.py"))


class BuildC(build_ext):
    """build_ext that compiles our C strictly and builds umld-sandbox."""

    def build_extension(self, ext: Any) -> None:
        if ext.name == C["MODULE"]:
            objects = self.compiler.compile(
                C["TRACER_SOURCES"],
                output_dir=self.build_temp,
                include_dirs=[C["C_DIR"]],
                extra_postargs=C["CFLAGS"],
                depends=C["TRACER_DEPENDS"],
            )
            ext.extra_objects = [*objects]
        super().build_extension(ext)

    def run(self) -> None:
        super().run()  # the extension; copied into the tree when in place
        self.build_sandbox()
        self.build_front()

    def build_front(self) -> None:
        objects = self.compiler.compile(
            [C["FRONT_SOURCE"]],
            output_dir=self.build_temp,
            macros=[("UMLD_PYTHON", '"' + sys.executable + '"')],
            extra_postargs=C["CFLAGS"],
            depends=[f"{C['C_DIR']}/build_ffi.py"],
        )
        out = C["FRONT"]
        self.mkpath(os.path.dirname(out))
        self.compiler.link_executable(
            objects, os.path.basename(out), output_dir=os.path.dirname(out)
        )

    def sandbox_path(self) -> str:
        if self.inplace:
            build_py = self.get_finalized_command("build_py")
            package_dir = build_py.get_package_dir(C["SANDBOX_PACKAGE"])
        else:
            package_dir = os.path.join(self.build_lib, *C["SANDBOX_PACKAGE"].split("."))
        return os.path.join(package_dir, C["SANDBOX_NAME"])

    def build_sandbox(self) -> None:
        # self.compiler: the one run() set up for the extension (CC, CFLAGS
        # and LDFLAGS from the environment and Python's build).
        source = C["SANDBOX_SOURCE"]
        objects = self.compiler.compile(
            [source],
            output_dir=self.build_temp,
            extra_postargs=C["CFLAGS"],
            depends=[f"{C['C_DIR']}/build_ffi.py"],
        )
        out = self.sandbox_path()
        self.mkpath(os.path.dirname(out))
        self.compiler.link_executable(
            objects, os.path.basename(out), output_dir=os.path.dirname(out)
        )

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), self.sandbox_path()]


class BuildScripts(build_scripts):
    """The one script is the compiled front end: copied as it is (the
    stock command reads scripts as text, to rewrite a Python #! line)."""

    def copy_scripts(self) -> tuple[list[str], list[str]]:
        self.mkpath(self.build_dir)
        out = []
        for script in self.scripts:
            target = os.path.join(self.build_dir, os.path.basename(script))
            self.copy_file(script, target)
            os.chmod(target, 0o755)
            out.append(target)
        return out, out


setup(
    cmdclass={"build_ext": BuildC, "build_scripts": BuildScripts},
    cffi_modules=["c_tracer/build_ffi.py:ffibuilder"],
    scripts=[C["FRONT"]],
)
