"""Prompt instruction: fixed, hand-written context (instructions, demonstrations, CoT)."""
