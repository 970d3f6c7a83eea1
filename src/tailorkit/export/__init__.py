"""`tailorkit export`: merge adapters into the base, quantize, verify the written folder, upload.

source.py loads what an export starts from, merge.py folds adapters and writes a model folder,
quantize.py runs GPTQModel / bitsandbytes / transformers' FP8, verify.py proves the written folder,
hub.py uploads it, run.py is the verb.
"""
