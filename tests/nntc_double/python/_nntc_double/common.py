"""Logging, failure switches, strict flag parsing and value parsers shared by every double tool."""
import fcntl
import json
import os
import re
import sys

TOOLS = ("bmnetp", "bmneto", "bmnetu", "pt_to_umodel", "on_to_umodel", "calibration_use_pb", "tpu_model")
SWITCHES = ("NNTC_DOUBLE_FAIL", "NNTC_DOUBLE_NO_BANNER", "NNTC_DOUBLE_NO_OUTPUT")

# bmnetp.md and bmnetu.md: "bmnetp/bmnetu 若成功，输出的 log 最后会看到以下信息" (exact text).
BANNER = ("######################################\n"
          "# Store bmodel of BMCompiler.\n"
          "######################################")


class DoubleError(RuntimeError):
    """A rejected invocation: `message` goes to stderr and the process exits with `code`."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.message = message
        self.code = code


def log_invocation(tool, argv, api=None, kwargs=None):
    """Append one JSON line to $NNTC_DOUBLE_LOG (when set): tool, argv, cwd (+ api/kwargs for Python APIs)."""
    path = os.environ.get("NNTC_DOUBLE_LOG")
    if not path:
        return
    rec = {"tool": tool, "argv": None if argv is None else list(argv), "cwd": os.getcwd()}
    if api:
        rec["api"] = api
        rec["kwargs"] = kwargs
    line = json.dumps(rec, sort_keys=True, default=repr) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # flock: parallel builds append to one log
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


def switch_on(var, tool):
    """True when env `var` (a comma-separated list of tool names) names `tool`.
    Strict: an unknown name is an error, so a typo cannot silently disable a failure test."""
    names = [n.strip() for n in os.environ.get(var, "").split(",") if n.strip()]
    for n in names:
        if n not in TOOLS:
            raise DoubleError(f"nntc-double: {var}={os.environ[var]!r} names unknown tool {n!r} "
                              f"(known: {', '.join(TOOLS)})", 1)
    return tool in names


def execute(tool, argv, check, produce, banner=False, raise_errors=False, api=None, kwargs=None):
    """Run one invocation: log it, validate (`check` -> opts), honour the switches, write outputs
    (`produce(opts)`), print the banner. Returns the exit status, or raises DoubleError if raise_errors."""
    log_invocation(tool, argv, api, kwargs)
    try:
        for var in SWITCHES:
            switch_on(var, tool)  # validate every switch up front
        opts = check()
        if switch_on("NNTC_DOUBLE_FAIL", tool):
            raise DoubleError(f"{tool}: ERROR: failing on purpose (NNTC_DOUBLE_FAIL={tool})", 1)
        if not switch_on("NNTC_DOUBLE_NO_OUTPUT", tool):
            produce(opts)
        if banner and not switch_on("NNTC_DOUBLE_NO_BANNER", tool):
            print(BANNER, flush=True)
        return 0
    except DoubleError as e:
        if raise_errors:
            raise
        sys.stdout.flush()
        print(e.message, file=sys.stderr, flush=True)
        return e.code


# ---------------------------------------------------------------- flag parsing

def parse_dashdash(prog, argv, known, no_value=(), required=()):
    """bmnetp style (argparse): every flag written `--key=value` as in bmnetp.md.
    Stricter than argparse: no `--key value`, no abbreviations, no repeats (argparse keeps the last).
    Errors use argparse's wording and exit status 2."""
    usage = f"usage: {prog} " + " ".join(f"[--{k}]" if k in no_value else f"[--{k}=<value>]" for k in known)

    def fail(msg):
        raise DoubleError(f"{usage}\n{prog}: error: {msg}", 2)

    opts, unknown = {}, []
    for tok in argv:
        m = re.fullmatch(r"--([A-Za-z_]+)(=(.*))?", tok, re.S)
        if not m or m.group(1) not in known:
            unknown.append(tok)
            continue
        key, val = m.group(1), m.group(3)
        if key in opts:
            fail(f"argument --{key}: given more than once")
        if key in no_value:
            if val is not None:
                fail(f"argument --{key}: ignored explicit argument {val!r}")
            val = True
        elif val is None:
            fail(f"argument --{key}: must be written --{key}=<value> (the documented form)")
        opts[key] = val
    if unknown:
        fail("unrecognized arguments: " + " ".join(unknown))
    missing = [f"--{k}" for k in required if k not in opts]
    if missing and not any(k in opts for k in no_value):
        fail("the following arguments are required: " + ", ".join(missing))
    return opts


def parse_gflags(prog, argv, known, positional=0):
    """bmnetu / calibration_use_pb style (gflags): every flag written `-key=value` as in the docs.
    Stricter than gflags, which also takes `--key`, `-key value` and repeats: those are refused
    so that the command lines bmbuild writes stay in the one documented form. Exit status 1."""
    opts, pos = {}, []
    for tok in argv:
        if not tok.startswith("-"):
            if len(pos) < positional and not opts:
                pos.append(tok)
                continue
            raise DoubleError(f"{prog}: ERROR: unexpected argument '{tok}' (flags are -key=value)", 1)
        m = re.fullmatch(r"-([A-Za-z_0-9]+)=(.*)", tok, re.S)
        if not m:
            name = tok.lstrip("-").split("=")[0]
            if name in known:
                raise DoubleError(f"{prog}: ERROR: flag '{tok}' must be written -{name}=<value> "
                                  "(single dash, '=', as documented)", 1)
            raise DoubleError(f"{prog}: ERROR: unknown command line flag '{name}'", 1)
        key, val = m.group(1), m.group(2)
        if key not in known:
            raise DoubleError(f"{prog}: ERROR: unknown command line flag '{key}'", 1)
        if key in opts:
            raise DoubleError(f"{prog}: ERROR: flag '-{key}' given more than once", 1)
        opts[key] = val
    return pos, opts


# ---------------------------------------------------------------- value parsers

_INT = r"[1-9][0-9]*"
_DIMS = rf"{_INT}(?:,{_INT})*"


def parse_shapes_nested(text, what):
    """bmnetp --shapes: `[[x,x,x,x],[x,x],...]` (bmnetp.md). No spaces, positive ints only."""
    if not re.fullmatch(rf"\[\[{_DIMS}\](?:,\[{_DIMS}\])*\]", text or ""):
        raise DoubleError(f"{what}: shapes {text!r} is not of the form [[x,x,x,x],[x,x],...] "
                          "with positive integers and no spaces", 2)
    return [[int(d) for d in grp.split(",")] for grp in re.findall(r"\[([0-9,]+)\]", text)]


def parse_shapes_flat(text, what):
    """bmnetu -shapes: `[x,x,x,x],[x,x],...` (bmnetu.md: no outer brackets). Positive ints, no spaces."""
    if not re.fullmatch(rf"\[{_DIMS}\](?:,\[{_DIMS}\])*", text or ""):
        raise DoubleError(f"{what}: ERROR: -shapes={text!r} is not of the form [x,x,x,x],[x,x],... "
                          "(no outer brackets, positive integers, no spaces)", 1)
    return [[int(d) for d in grp.split(",")] for grp in re.findall(r"\[([0-9,]+)\]", text)]


def parse_bool(text, spellings, what, code):
    """Booleans in exactly the documented spelling, e.g. ("True", "False") for bmnetp/bmnetu and
    ("true", "false") for calibration_use_pb. The real parsers are looser (a str2bool that maps any
    unknown word to False, gflags' t/yes/1...); the double refuses everything else."""
    if text == spellings[0]:
        return True
    if text == spellings[1]:
        return False
    raise DoubleError(f"{what}: invalid value {text!r} (expected {spellings[0]} or {spellings[1]})", code)


def parse_choice_int(text, choices, what, code):
    if text not in [str(c) for c in choices]:
        raise DoubleError(f"{what}: invalid choice: {text!r} (choose from {', '.join(map(str, choices))})", code)
    return int(text)


def check_name(name, what, code):
    """Net names: the docs are silent; the double refuses empty names and names with whitespace,
    path separators or quotes, since they end up in file names and prototxt strings."""
    if not name or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name) or name in (".", ".."):
        raise DoubleError(f"{what}: invalid net name {name!r}", code)
    return name
