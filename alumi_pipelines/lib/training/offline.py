"""Make ultralytics run with no network: no weight, font or dataset downloads, no pip, no telemetry.

Call :func:`prepare_offline` before the first ``import ultralytics`` of a process (it is idempotent
and also fixes the settings of an already imported ultralytics).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Integrations that ultralytics switches on by itself when their package is importable.
_OFF_SETTINGS = {
    "sync": False,
    "mlflow": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "neptune": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
}


def _font_source() -> Path | None:
    """A TrueType font that ships with an installed package or the OS (no download)."""
    candidates = [Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    try:
        import matplotlib

        candidates.insert(0, Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    return next((p for p in candidates if p.is_file()), None)


def prepare_offline(config_dir: str | Path) -> Path:
    """Point ultralytics at ``config_dir``, place its fonts there and switch every network path off."""
    config_dir = Path(config_dir).resolve()
    (config_dir / "Ultralytics").mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations asks PyPI for updates on import
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "False")
    os.environ.setdefault("MPLBACKEND", "Agg")
    font = _font_source()
    if font is not None:
        for name in ("Arial.ttf", "Arial.Unicode.ttf"):
            target = config_dir / "Ultralytics" / name
            if not target.exists():
                shutil.copyfile(font, target)
    import sys

    if "ultralytics" in sys.modules:
        _switch_off()
    else:
        # Write the settings file ultralytics reads at import time.
        import json

        settings_file = config_dir / "Ultralytics" / "settings.json"
        current = json.loads(settings_file.read_text()) if settings_file.exists() else {}
        current.update(_OFF_SETTINGS)
        settings_file.write_text(json.dumps(current, indent=2))
    return config_dir


def import_ultralytics(config_dir: str | Path):
    """prepare_offline + import, then force the settings off (import may have reset the file)."""
    try:
        prepare_offline(config_dir)
        import ultralytics

        _switch_off()
    except KeyError:
        # The settings list above names an integration this ultralytics version lacks: switch off the ones it has.
        from ultralytics.utils import SETTINGS

        SETTINGS.update({k: v for k, v in _OFF_SETTINGS.items() if k in SETTINGS.defaults})
        import ultralytics
    return ultralytics


def _switch_off() -> None:
    """Turn off every integration this ultralytics version knows of."""
    from ultralytics.utils import SETTINGS

    SETTINGS.update({k: v for k, v in _OFF_SETTINGS.items() if k in SETTINGS})
