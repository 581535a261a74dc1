"""minirl: readable long-video RL (LongVILA-R1 / MR-SP) for Qwen2.5-VL in pure PyTorch."""
