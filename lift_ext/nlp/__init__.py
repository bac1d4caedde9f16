"""Language-model backbones for the meta fine-tuning benchmarks.

    lift_ext.nlp.load_or_pretrain(train_ids, vocab_size, config)  cached char-level GPT-2
    lift_ext.nlp.add_lora(model, r=, alpha=, include_mlp=)         peft LoRA on its projections
    lift_ext.nlp.lm_loss / next_token_accuracy                     training loss and metric
"""
from lift_ext.nlp.backbone import (BackboneConfig, add_lora, build_model, lm_loss, load_or_pretrain,
                                   next_token_accuracy, pretrain)

__all__ = ["BackboneConfig", "add_lora", "build_model", "lm_loss", "load_or_pretrain",
           "next_token_accuracy", "pretrain"]
