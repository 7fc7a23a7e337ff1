"""Settings: what one anm-train invocation is asked to do (data, noise, methods, seeds, device,
hyper-parameter overrides), as the command line and config files give it (cli.py) and as the
driver (loop.py) and each run (single_run.py) read it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Settings:
    dataset: str = "digits"
    data_dir: Optional[str] = None
    noise: str = "sym"
    noise_file: Optional[str] = None
    noise_rate: float = 0.5
    methods: List[str] = field(default_factory=lambda: ["dividemix-anm"])
    seeds: List[int] = field(default_factory=lambda: [0])
    device: Optional[str] = None
    hp: Dict = field(default_factory=dict)             # overrides for every method
    method_hp: Dict = field(default_factory=dict)      # overrides per method name
    trust_noise_file: bool = False
    progress: bool = True
    plots: bool = True
    preset: Optional[str] = None       # None: chosen from the data (loop.resolve_preset)
    preset_reason: str = ""
