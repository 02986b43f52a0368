"""Checks and conversions of option values: output paths, ``module:attribute`` specs, rules, --target,
--device, --rules and --baseline."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, List

from ..composites import as_composite
from ..data import local_device
from .errors import CliError


def check_writable(path, option: str = "--out") -> Path:
    """Fail before the work, not after it, when ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"{option} '{path}': the folder '{folder}' does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise CliError(f"{option} '{path}': the folder '{folder}' is not writable; choose another path")
    if path.is_dir():
        raise CliError(f"{option} '{path}' is a folder; give a file name")
    return path


def import_attribute(spec: str, option: str):
    """The object named by ``module.path:name`` or ``file.py:name`` (a file already loaded, e.g. by --model, is
    reused, so a model and its data set may share one module and its caches)."""
    if ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        raise CliError(f"{option} takes 'module.path:factory' or 'file.py:factory', got '{spec}'")
    source, name = spec.rsplit(":", 1)
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise CliError(f"file not found: {source} (from {option} {spec})")
        module = sys.modules.get(path.stem)
        if module is None or Path(getattr(module, "__file__", "") or "").resolve() != path.resolve():
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules.setdefault(path.stem, module)
            module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(source)
        except ModuleNotFoundError as exc:
            raise CliError(f"cannot import '{source}' (from {option} {spec}): {exc}") from exc
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise CliError(f"'{source}' has no attribute '{name}' (from {option} {spec})")
        obj = getattr(obj, part)
    return obj


def check_rule(rule: str):
    """Parse a preset or rule string now, so that a typo fails before the model is loaded."""
    return as_composite(rule)


def target_option(text: str):
    if text == "argmax":
        return None
    if text == "label":
        return "label"
    try:
        return int(text)
    except ValueError:
        raise CliError(f"--target takes argmax, label or a class index, got '{text}'") from None


def device_option(text: str) -> str:
    if text == "auto":
        return str(local_device())
    return text


def split_rules(text: str) -> List[str]:
    """Comma-separated rule strings; commas inside parentheses belong to the rule (alphabeta(2,1))."""
    rules, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            rules.append(current.strip())
            current = ""
        else:
            current += ch
    rules.append(current.strip())
    rules = [r for r in rules if r]
    if not rules:
        raise CliError("--rules is empty")
    return rules


def baseline_option(text: str):
    if text in ("zero", "mean", "uniform"):
        return text
    try:
        return float(text)
    except ValueError:
        raise CliError(f"--baseline takes a number, zero, mean or uniform, got '{text}'") from None

