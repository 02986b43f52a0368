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
    import difflib

    names = sorted(set(names))
    close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
    hint = f"close matches: {close}" if close else f"node names include {names[:12]}"
    return RuleError(f"{option} pattern {pattern!r} matches no node of this model; {hint}. The rule table "
                     "(lrpfx.export(model, x).rule_table()) lists every node with its name")
