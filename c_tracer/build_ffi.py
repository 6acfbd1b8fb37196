"""Build umld.tracer._c_tracer, the cffi (API mode) extension of the C tracer.

    .venv/bin/python c_tracer/build_ffi.py

compiles in place: umld/tracer/_c_tracer.<abi tag>.so next to ptrace_c.py
(the generated glue umld/tracer/_c_tracer.c and the objects are
gitignored).

Warnings: our own C files (tracer.c, mem.c) are compiled on their own with
``-Wall -Wextra -Werror -O2`` and linked in as objects, so -Werror holds for
every line we wrote whatever cffi generates.  cffi's glue is compiled with
the same options (with cffi 2.x it is warning-free; if a cffi release ever
makes it warn, drop -Werror from GLUE only).

The cdef is the part of umld_tracer.h between the CDEF-BEGIN and CDEF-END
markers, so the header and the binding cannot drift apart.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

from cffi import FFI  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEADER = HERE / "umld_tracer.h"
SOURCES = ["tracer.c", "mem.c"]
STRICT = ["-Wall", "-Wextra", "-Werror", "-O2", "-std=gnu11"]
GLUE = ["-Wall", "-Wextra", "-Werror", "-O2"]


def cdef_text() -> str:
    text = HEADER.read_text()
    m = re.search(r"/\* CDEF-BEGIN \*/\n(.*?)/\* CDEF-END \*/", text, re.S)
    if not m:
        raise SystemExit(f"{HEADER}: CDEF markers not found")
    return m.group(1)


def compile_objects() -> list[str]:
    """Compile our C sources with -Werror; return the object paths."""
    from setuptools._distutils.ccompiler import new_compiler  # type: ignore[import-untyped]
    from setuptools._distutils.sysconfig import customize_compiler  # type: ignore[import-untyped]

    cc = new_compiler()
    customize_compiler(cc)  # CC, CFLAGS and -fPIC (CCSHARED) from Python's build
    objdir = ROOT / "build" / "c_tracer"
    objdir.mkdir(parents=True, exist_ok=True)
    # Relative source paths keep the objects under objdir/c_tracer/.
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        objs = cc.compile(
            [f"c_tracer/{s}" for s in SOURCES],
            output_dir=str(objdir),
            include_dirs=[str(HERE)],
            extra_preargs=None,
            extra_postargs=STRICT,
            depends=[str(HEADER), str(HERE / "tracer_internal.h")],
        )
    finally:
        os.chdir(cwd)
    return [str(objdir / o) if not os.path.isabs(o) else o for o in objs]


def make_ffi(objects: list[str]) -> FFI:
    ffibuilder = FFI()
    ffibuilder.cdef(cdef_text())
    ffibuilder.set_source(
        "umld.tracer._c_tracer",
        '#include "umld_tracer.h"\n',
        include_dirs=[str(HERE)],
        extra_objects=objects,
        extra_compile_args=GLUE,
        libraries=["pthread"],
        depends=[str(HEADER), *[str(HERE / s) for s in SOURCES]],
    )
    return ffibuilder


def main() -> None:
    # setuptools reads pyproject.toml from the build directory and warns
    # that [tool.setuptools] is beta; irrelevant here.
    warnings.simplefilter("ignore")
    objects = compile_objects()
    ffibuilder = make_ffi(objects)
    # tmpdir=ROOT: the glue goes to ROOT/umld/tracer/_c_tracer.c and the
    # module to ROOT/umld/tracer/, i.e. in place.
    so = ffibuilder.compile(tmpdir=str(ROOT), verbose="-v" in sys.argv)
    print(os.path.relpath(so, ROOT))


if __name__ == "__main__":
    main()
