"""The lrpfx error hierarchy: every failure a user can cause is one of these, with the fix in the message."""


class LrpfxError(Exception):
    """Base class of every error lrpfx raises on purpose."""


class TraceError(LrpfxError):
    """The model could not be traced into a graph (data-dependent control flow, untraceable code)."""


class UnsupportedOpError(LrpfxError):
    """A node of the traced graph has no relevance rule and none was assigned."""


class RuleError(LrpfxError, ValueError):
    """A rule string or rule parameter is invalid, or a rule cannot apply to the node it was assigned to."""


class TargetError(LrpfxError, ValueError):
    """The target (class index, index tensor or initial relevance) does not fit the model's output."""


class InputError(LrpfxError, ValueError):
    """The input does not fit the model: wrong shape, dtype, device, count, or non-finite values."""


class OutputError(LrpfxError, ValueError):
    """The model's output is not a single tensor and no ``output=`` selector says which tensor to explain."""


class LrpfxWarning(UserWarning):
    """Something is true of this explanation that a user would not expect, e.g. an input the output does not
    depend on (its relevance is zero because nothing reaches it, not because a rule gave zero)."""


def unmatched_pattern(option: str, pattern: str, names) -> RuleError:
    """The error for a qualified-name glob (``by_name``, ``constants``) that names no node of the model: a typo or
    a pattern written for another model, which would otherwise do nothing. Lists close matches."""
    return RuleError(f"{option} pattern {pattern!r} matches no node of this model; {close_names(pattern, names)}. "
                     "The rule table (lrpfx.export(model, x).rule_table()) lists every node with its name")


def close_names(name: str, names) -> str:
    """``close matches: [...]`` for a misspelt name (a qualified name's last part counts too), else the first
    names there are, so an error always shows what could have been meant."""
    import difflib

    names = sorted(set(names))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    tail = name.rsplit(".", 1)[-1]
    close += [n for n in names if n not in close and (n == tail or n.endswith("." + tail))][:5 - len(close)]
    return f"close matches: {close}" if close else f"names include {names[:12]}"


# torch's own additions to an error's text: where fx was executing, its tracer's traceback, log hints
_TORCH_TAIL_STARTS = ("While executing ", "Original traceback:", "Use tlparse", "For more information, run with",
                      "For extended logs", "Caused by: (", "consider using data-dependent friendly APIs",
                      "If you suspect the guard", "For more debugging help", "For C++ stack trace")


def torch_message(exc: BaseException) -> str:
    """``exc``'s message without what torch.fx and torch.export append for their own developers (the node being
    executed, the tracer's traceback, logging hints): lrpfx names the node and the user's line itself."""
    kept = []
    for line in str(exc).strip().splitlines():
        if line.startswith(("While executing ", "Original traceback:")):
            break  # everything after is fx's dump of its own frames
        if not line.strip().startswith(_TORCH_TAIL_STARTS):
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept)
