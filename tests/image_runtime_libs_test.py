#!/usr/bin/python3
"""The container image cannot miss a runtime library.

This is the check that needs no container engine (`make test`); `make
image-test` runs the image itself (ldd inside it, tests/image_container_test.cc).
Here: every shared library that ldd resolves for the built attnserve and
attnctl must belong (dpkg -S) to a package that the Dockerfile's runtime stage
installs, or to libc/libstdc++/libgcc of the base image. Also checks that the
runtime stage copies both binaries and the models, and that the build stage
builds both. A mutated Dockerfile (one package dropped) must fail the check,
which proves the check can fail.

Run by ctest, with ATTNSERVE_BINARY and ATTNCTL_BINARY in the environment.
"""
import os
import re
import subprocess
import unittest

# What debian:bookworm-slim already holds that our binaries link.
BASE_IMAGE_PACKAGES = {"libc6", "libstdc++6", "libgcc-s1"}


def runtime_stage(dockerfile):
    """The text of the last FROM stage."""
    stages = re.split(r"(?m)^FROM\s", dockerfile)
    return stages[-1]


def installed_packages(stage):
    """Package names given to apt-get install in a stage."""
    packages = set()
    text = stage.replace("\\\n", " ")
    for command in re.findall(r"apt-get install([^&;\n]*)", text):
        for word in command.split():
            if not word.startswith("-"):
                packages.add(word)
    return packages


def resolved_libraries(binary):
    """Absolute paths of the shared libraries ldd resolves for binary;
    raises if any is 'not found'."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        if "not found" in line:
            raise AssertionError(f"{binary}: ldd cannot resolve {line.strip()}")
        match = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if match:
            paths.append(match.group(1))
    return paths


def candidates(path):
    """The spellings dpkg may have recorded a library under: the path, its
    symlink target, and their /lib and /usr/lib forms (merged /usr)."""
    paths = [path, os.path.realpath(path)]
    for p in list(paths):
        if p.startswith("/usr/lib/"):
            paths.append(p[len("/usr"):])
        elif p.startswith("/lib/"):
            paths.append("/usr" + p)
    return paths


def owning_packages(libraries):
    """{library path: owning Debian package or None}, with one dpkg -S call."""
    spellings = {lib: candidates(lib) for lib in libraries}
    every = sorted({c for cs in spellings.values() for c in cs})
    # dpkg -S prints "package:arch: path" per path it knows and fails for the
    # others (which is why its exit code is not checked).
    out = subprocess.run(["dpkg", "-S"] + every, capture_output=True, text=True).stdout
    owner = {}
    for line in out.splitlines():
        package, _, path = line.partition(": ")
        owner[path.strip()] = package.split(":")[0].strip()
    return {lib: next((owner[c] for c in cs if c in owner), None) for lib, cs in spellings.items()}


def problems(dockerfile, binaries):
    """What the Dockerfile's runtime stage misses for binaries; [] if nothing."""
    stage = runtime_stage(dockerfile)
    allowed = installed_packages(stage) | BASE_IMAGE_PACKAGES
    found = []
    for binary in binaries:
        libraries = resolved_libraries(binary)
        for library, package in owning_packages(libraries).items():
            if package is None:
                found.append(f"{os.path.basename(binary)}: {library} belongs to no Debian package")
            elif package not in allowed:
                found.append(f"{os.path.basename(binary)}: {library} is in package {package}, "
                             "which the runtime stage does not install")
    for name in ("attnserve", "attnctl"):
        if not re.search(rf"(?m)^COPY --from=build \S*/{name} /usr/local/bin/{name}$", stage):
            found.append(f"the runtime stage does not copy {name} to /usr/local/bin")
    if not re.search(r"(?m)^COPY --from=build /src/models ", stage):
        found.append("the runtime stage does not copy models/")
    # Either both binaries by name, or `all` (which, without the tests, is
    # just the two binaries and their libraries).
    build_targets = re.search(r"--target ([^\n\\]*)", dockerfile)
    builds_all = not build_targets and re.search(r"cmake --build build\b", dockerfile)
    for name in ("attnserve", "attnctl"):
        if not builds_all and (not build_targets or name not in build_targets.group(1).split()):
            found.append(f"the build stage does not build {name}")
    return found


class ImageRuntimeLibrariesTest(unittest.TestCase):
    source_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binaries = [os.environ.get("ATTNSERVE_BINARY", ""), os.environ.get("ATTNCTL_BINARY", "")]

    def setUp(self):
        for binary in self.binaries:
            self.assertTrue(os.access(binary, os.X_OK), f"not built: '{binary}'")

    def dockerfile(self):
        with open(os.path.join(self.source_dir, "Dockerfile")) as f:
            return f.read()

    def test_runtime_stage_has_every_library(self):
        self.assertEqual(problems(self.dockerfile(), self.binaries), [])

    def test_a_missing_package_is_caught(self):
        text = self.dockerfile()
        self.assertIn(" libdnnl2 ", text)
        found = problems(text.replace(" libdnnl2 ", " "), self.binaries)
        self.assertTrue(any("libdnnl" in p and "libdnnl2" in p for p in found), found)

    def test_a_missing_binary_is_caught(self):
        text = self.dockerfile()
        found = problems(re.sub(r"(?m)^COPY --from=build \S*/attnctl .*$", "", text), self.binaries)
        self.assertIn("the runtime stage does not copy attnctl to /usr/local/bin", found)


if __name__ == "__main__":
    unittest.main(verbosity=2)
