"""Healing: brief supervised fine-tuning of a pruned model (TRL / peft)."""
