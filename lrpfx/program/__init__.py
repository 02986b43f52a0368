"""Stage 5 and after: the relevance program — built (builder.py, one emitter per rule and kind in emit.py), held
(program.py), written out (save.py: dot.py, code.py, exported.py) and run compiled or eager (faster.py)."""
