"""Model zoo: load a backbone by alias, hub id, directory or GGUF file; the theory's readout."""

from .checkpoint import load_finetuned, save_finetuned
from .readout import Readout, last_token_index, pool, position_ids_from_mask
from .zoo import (
           ALIASES,
           LoadedModel,
           block_list,
           cache_dir,
           fingerprint,
           load_causal_lm,
           load_model,
           model_names,
           truncate_backbone,
)

__all__ = ["ALIASES", "LoadedModel", "Readout", "block_list", "cache_dir", "fingerprint", "last_token_index", "load_causal_lm",
           "load_finetuned", "load_model", "model_names", "pool", "position_ids_from_mask", "save_finetuned", "truncate_backbone"]
