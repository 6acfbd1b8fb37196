"""The C side of umld, declared once: sources, the one flag set, the binding.

setup.py is the only builder (``pip install .``, ``pip wheel .``, and
``pip install -e .``, which ``make install`` runs): it names this file in
``cffi_modules`` (cffi executes it and takes ``ffibuilder``) and reads the
lists below for the two C programs,

* ``umld.tracer._c_tracer``: the cffi (API mode) extension of the C tracer,
  TRACER_SOURCES compiled with CFLAGS and linked in as objects with the
  glue cffi generates (compiled with GLUE_CFLAGS);
* ``umld/core/umld-sandbox``: SANDBOX_SOURCE compiled with CFLAGS into an
  executable installed beside umld/core/sandbox.py.

Warnings: CFLAGS make every warning of the code we wrote an error,
-Wconversion included (implicit conversions that may change a value or
its sign: each place that really converts says so with a cast and a
comment).  cffi's generated glue is not ours and converts freely, so it
gets the same set without -Wconversion.

The cdef is the part of umld_tracer.h between the CDEF-BEGIN and CDEF-END
markers, so the header and the binding cannot drift apart.

Paths are relative to the project root, where setup.py runs (setuptools
wants relative source paths).
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
#: The directory of the C sources, relative to the project root.
C_DIR = "c_tracer"
HEADER = HERE / "umld_tracer.h"

#: The warnings and options of every C file we wrote (tracer.c, mem.c,
#: sandbox.c); the one list the build uses.
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wconversion", "-Werror"]
#: cffi's generated glue: CFLAGS without -Wconversion (see above).
GLUE_CFLAGS = [f for f in CFLAGS if f != "-Wconversion"]

MODULE = "umld.tracer._c_tracer"
TRACER_SOURCES = [f"{C_DIR}/tracer.c", f"{C_DIR}/mem.c"]
#: A change to these rebuilds the objects (this file holds the flags).
TRACER_DEPENDS = [f"{C_DIR}/umld_tracer.h", f"{C_DIR}/tracer_internal.h", f"{C_DIR}/build_ffi.py"]
SANDBOX_SOURCE = f"{C_DIR}/sandbox.c"
#: Where the sandbox goes: the package of umld/core/sandbox.py, which
#: finds it by this name beside itself.
SANDBOX_PACKAGE = "umld.core"
SANDBOX_NAME = "umld-sandbox"
#: The ``umld`` command itself: a front end that starts runs warm and
#: execs the interpreter for everything else (umld/_warm.py says why);
#: installed as the package's script, built with the interpreter's path.
FRONT_SOURCE = f"{C_DIR}/front.c"
FRONT = "build/front/umld"


def cdef_text() -> str:
    text = HEADER.read_text()
    m = re.search(r"/\* CDEF-BEGIN \*/\n(.*?)/\* CDEF-END \*/", text, re.S)
    if not m:
        raise SystemExit(f"{HEADER}: CDEF markers not found")
    return m.group(1)


def make_ffi() -> FFI:
    """The binding; setup.py adds the objects of TRACER_SOURCES."""
    ffibuilder = FFI()
    ffibuilder.cdef(cdef_text())
    ffibuilder.set_source(
        MODULE,
        '#include "umld_tracer.h"\n',
        include_dirs=[C_DIR],
        extra_compile_args=GLUE_CFLAGS,
        libraries=["pthread"],
        depends=[*TRACER_DEPENDS, *TRACER_SOURCES],
        # Built for the interpreter that installs it, under the same file
        # name as every earlier build, so that an in-place rebuild replaces
        # the old module instead of leaving it to shadow an .abi3.so.
        py_limited_api=False,
    )
    return ffibuilder


ffibuilder = make_ffi()
