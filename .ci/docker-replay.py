#!/usr/bin/env python3
"""Replays a Dockerfile's build stages without a Docker engine, to check they still build.

CI has no Docker engine, so a Dockerfile that no longer matches the workspace (a member
left out of the dependency stage, a path renamed) would only fail on a user's machine.
This runs each stage literally instead:

- every stage gets its own scratch directory standing for its filesystem root; a stage
  `FROM` an earlier one starts from a copy of it; a stage `FROM` an image (the base
  toolchain image, or the distroless runtime) starts empty and uses this machine's tools;
- `WORKDIR` and `ENV` as Docker does them;
- `COPY src... dst` with Docker's semantics: sources relative to the build context (the
  repository root) minus what `.dockerignore` excludes, or `--from=stage` paths in that
  stage's root; a directory source copies its contents; `dst` ending in `/` or naming
  an existing directory receives the sources inside it; relative `dst` is under WORKDIR;
- `RUN` in bash (`-euo pipefail`) with WORKDIR as the current directory. Commands must
  use paths under WORKDIR (relative ones): an absolute path would reach this machine's
  own root, and the replay refuses a RUN that names one outside WORKDIR;
- `USER`, `EXPOSE`, `ENTRYPOINT`, `CMD`, `LABEL` do not change the build and are skipped.

Usage: docker-replay.py DOCKERFILE WORKDIR_ROOT [--expect PATH ...]
  --expect: paths in the last stage's root that must exist afterwards (the binaries).
Environment: CARGO_TARGET_DIR and CARGO_PROFILE_* pass through to RUN, so CI can share
one target directory between replays and build without optimisation; the commands
themselves are the Dockerfile's.
"""

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys


def instructions(path):
    """(keyword, arguments) per instruction, continuations joined, comments dropped."""
    out, current = [], ""
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    if current:
        sys.exit(f"{path}: the last instruction ends with a continuation")
    return out


def ignored_patterns(context):
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return []
    return [l.strip().rstrip("/") for l in open(path) if l.strip() and not l.startswith("#")]


def is_ignored(rel, patterns):
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if any(fnmatch.fnmatch(prefix, p) for p in patterns):
            return True
    return False


def copy_tree(src, dst, context_patterns=None, rel_base=""):
    """Copies the contents of directory src into dst (created), skipping ignored paths."""
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        rel = f"{rel_base}/{name}" if rel_base else name
        if context_patterns is not None and is_ignored(rel, context_patterns):
            continue
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s) and not os.path.islink(s):
            copy_tree(s, d, context_patterns, rel)
        else:
            shutil.copy2(s, d, follow_symlinks=False)


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    dockerfile, scratch = args[0], os.path.abspath(args[1])
    expect = []
    if "--expect" in args:
        expect = args[args.index("--expect") + 1:]
    context = os.path.dirname(os.path.abspath(__file__)) + "/.."
    context = os.path.abspath(context)
    patterns = ignored_patterns(context)
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)

    stages = {}  # name -> (root dir, WORKDIR, ENV) as the stage ended
    root = workdir = current = None
    env = dict(os.environ)
    index = 0
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", rest, re.IGNORECASE)
            if not m:
                sys.exit(f"FROM {rest}: not understood")
            base, name = m.group(1), m.group(2) or f"stage{index}"
            index += 1
            if root is not None:
                # The stage just ended: what later stages build on and copy from.
                stages[current] = (root, workdir, env)
            root = os.path.join(scratch, name)
            if base in stages:
                # A stage built on another inherits its files, WORKDIR and ENV.
                base_root, workdir, env = stages[base]
                shutil.copytree(base_root, root, symlinks=True)
                env = dict(env)
            else:
                os.makedirs(root)
                workdir, env = "/", dict(os.environ)
            current = name
            print(f"replay: FROM {base} AS {name}", flush=True)
        elif keyword == "WORKDIR":
            workdir = os.path.normpath(os.path.join(workdir, rest))
            os.makedirs(root + workdir, exist_ok=True)
        elif keyword == "ENV":
            k, _, v = rest.partition("=") if "=" in rest.split()[0] else rest.partition(" ")
            env[k.strip()] = v.strip().strip('"')
        elif keyword == "COPY":
            words = shlex.split(rest)
            source_root, rel_patterns = context, patterns
            while words and words[0].startswith("--"):
                flag = words.pop(0)
                if flag.startswith("--from="):
                    source_root, rel_patterns = stages[flag[len("--from="):]][0], None
            *srcs, dst = words
            dst_abs = root + os.path.normpath(os.path.join(workdir, dst))
            into_dir = dst.endswith("/") or len(srcs) > 1 or os.path.isdir(dst_abs)
            for src in srcs:
                s = os.path.normpath(os.path.join(source_root, src.lstrip("/")))
                if not os.path.exists(s):
                    sys.exit(f"COPY {rest}: {src} does not exist")
                if os.path.isdir(s):
                    base_rel = "" if src in (".", "./") else os.path.relpath(s, source_root)
                    copy_tree(s, dst_abs, rel_patterns, base_rel)
                else:
                    target = os.path.join(dst_abs, os.path.basename(s)) if into_dir else dst_abs
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy2(s, target)
            print(f"replay: COPY {rest}", flush=True)
        elif keyword == "RUN":
            for path in re.findall(r"(?<![\w.$}-])(/[\w./-]+)", rest):
                if not (path + "/").startswith(workdir.rstrip("/") + "/"):
                    sys.exit(f"RUN names {path}, outside WORKDIR {workdir}: the replay cannot run it")
            print(f"replay: RUN {rest}", flush=True)
            cwd = root + workdir
            # Absolute paths under WORKDIR (only those are allowed) point into the stage.
            cmd = rest
            if workdir != "/":
                cmd = re.sub(r"(?<![\w.$}/-])" + re.escape(workdir) + r"(?=/|\b)", cwd, rest)
            subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=env, check=True)
        elif keyword in ("USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL", "ARG"):
            continue
        else:
            sys.exit(f"{keyword}: the replay does not know this instruction")
    for path in expect:
        full = root + path
        if not (os.path.isfile(full) and os.access(full, os.X_OK)):
            sys.exit(f"{path} was not produced in the last stage")
        print(f"replay: {path} produced ({os.path.getsize(full)} bytes)")


if __name__ == "__main__":
    main()
