"""timm EfficientNet weights from the Hugging Face Hub: `hf-hub:timm/efficientnet_b0.ra_in1k` -> local files.

`fetch` finds (or downloads once) a timm repo's `config.json` and weights through `huggingface_hub.hf_hub_download`,
which owns the cache (HF_HUB_CACHE) and offline mode (HF_HUB_OFFLINE), so a cached repo loads with no network.
It only locates and checks files; the importer (`effnet_torch.importers`, weight source "timm") reads the tensors.
huggingface_hub is optional (`effnet[hub]`) and imported only here, when an id is fetched. Every failure is one
`HubError` line that names the id and says what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass, replace

from effnet_spec import ModelSpec, Preprocessing, default_preprocessing, imagenet_class_names
from effnet_spec.adapt import HUB_PREFIX

__all__ = ["PREFIX", "HubError", "HubWeights", "fetch", "hub_preprocessing", "is_hub_id"]

PREFIX = HUB_PREFIX

# timm's names for the architectures effnet builds and its importers read (not efficientnet_em/es/cc, mixnet, ...):
# V1 and Lite, and V2 as timm builds it (tf_efficientnetv2_s/m/l/xl/b0..b3; its untrained efficientnetv2_s/m/l/xl)
_ARCH = re.compile(
    r"(tf_)?efficientnet_(b[0-8]|l2|lite[0-4])|tf_efficientnetv2_(s|m|l|xl|b[0-3])|efficientnetv2_(s|m|l|xl)"
)
# `org/name[@revision]`, as huggingface_hub validates ids: word chars, '-', '.'; the revision a branch, tag or commit
_ID = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?", re.ASCII)
_TAG = re.compile(r"[\w.-]+")  # what `parse_model_name` accepts after the dot
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
_CONFIG, _SAFETENSORS, _BIN = "config.json", "model.safetensors", "pytorch_model.bin"


class HubError(ValueError):
    """A Hub id that cannot be fetched or used; the message is one line naming the id and the fix."""


def is_hub_id(source: object) -> bool:
    """Whether `source` names Hub weights rather than a local path."""
    return isinstance(source, str) and source.startswith(PREFIX)


@dataclass(frozen=True)
class HubWeights:
    """A fetched timm repo: where its weights lie and what its config.json says about them."""

    repo_id: str  # "timm/efficientnet_b0.ra_in1k"
    weights_path: str  # model.safetensors, or pytorch_model.bin where the repo has no safetensors
    architecture: str  # config.json "architecture": "tf_efficientnet_lite0"
    model_name: str  # the importer's `model=`: architecture + "." + pretrained tag when known
    num_classes: int
    pretrained_cfg: dict  # config.json "pretrained_cfg" ({} when absent)
    label_names: tuple[str, ...] | None  # config.json "label_names" when one string per class


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _parse(source: object) -> tuple[str, str | None]:
    """(repo_id, revision) of `hf-hub:<org>/<name>[@revision]`."""
    rest = source[len(PREFIX) :] if is_hub_id(source) else None
    m = _ID.fullmatch(rest) if rest is not None else None
    # huggingface_hub refuses "--" and ".." in ids (the cache folder joins org and name with "--"); a ".."
    # revision would leave the cache's snapshots folder
    if not m or "--" in m["repo"] or ".." in m["repo"] or ".." in (m["revision"] or ""):
        raise HubError(
            f"malformed Hub id {source!r}; expected '{PREFIX}<org>/<name>[@revision]', "
            f"e.g. '{PREFIX}timm/efficientnet_b0.ra_in1k'"
        )
    return m["repo"], m["revision"]


def _downloader(source: str, repo_id: str, revision: str | None):
    """A `download(filename) -> path` over hf_hub_download that turns its exceptions into one-line HubErrors.

    It raises `_Missing` for a file the repo does not have, so that the caller can try another one. The classes
    are huggingface_hub 2.x's (`huggingface_hub.errors`); offline or unreachable, hf_hub_download returns the
    cached file or raises LocalEntryNotFoundError.
    """
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:
        raise HubError(f"{source}: needs huggingface_hub: pip install 'effnet[hub]' ({_first_line(e)})") from None

    at = f" --revision {revision}" if revision else ""

    def download(filename: str) -> str:
        try:
            with _quiet_retries():
                return hf_hub_download(repo_id, filename, revision=revision)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            # Not cached, and HF_HUB_OFFLINE is set or the Hub could not be reached (the cache is all it has)
            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
            raise _NotCached(
                f"{source}: {filename} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
                f"download it once with network (`hf download {repo_id}{at}`) or point HF_HUB_CACHE at a copied cache"
            ) from e
        except RemoteEntryNotFoundError as e:
            raise _Missing(filename) from e
        except GatedRepoError as e:  # before RepositoryNotFoundError, its base class
            raise HubError(
                f"{source}: repository {repo_id} is gated; accept its terms on huggingface.co and log in "
                f"(`hf auth login`) ({_first_line(e)})"
            ) from None
        except RepositoryNotFoundError as e:
            raise HubError(
                f"{source}: repository {repo_id} was not found on the Hub; check the id, or log in "
                f"(`hf auth login`) if it is private ({_first_line(e)})"
            ) from None
        except RevisionNotFoundError as e:
            raise HubError(
                f"{source}: revision {revision or 'main'!r} of {repo_id} was not found; name an existing branch, "
                f"tag or commit after '@' ({_first_line(e)})"
            ) from None
        except HFValidationError as e:
            raise HubError(f"{source}: huggingface_hub refuses the id: {_first_line(e)}") from None
        except (HfHubHTTPError, OSError, ValueError) as e:  # HTTP errors, a cache that cannot be written, ...
            raise HubError(f"{source}: could not fetch {filename} of {repo_id}: {_first_line(e)}") from None

    return download


@contextlib.contextmanager
def _quiet_retries():
    """huggingface_hub logs a warning per retry of an unreachable Hub; the error effnet raises says it in one line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _NotCached(HubError):
    """A file neither in the cache nor downloadable now (offline or no connection)."""


class _Missing(Exception):
    """A file the repository does not have (internal: the caller names what is missing)."""


def _read_config(source: str, path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HubError(f"{source}: {path} is not a readable JSON file ({_first_line(e)})") from None
    if not isinstance(config, dict):
        raise HubError(f"{source}: {path} must hold a JSON object, got {type(config).__name__}")
    if "architecture" not in config:
        raise HubError(f"{source}: {path} has no 'architecture'; is this a timm model repository?")
    return config


def fetch(source: str) -> HubWeights:
    """Locate (downloading once, when online) a timm EfficientNet repo's config.json and weights.

    Raises:
        HubError: a malformed id, huggingface_hub missing, the repo or a file not cached while offline, not found
            or not downloadable, a config.json that is not JSON or not a timm EfficientNet / EfficientNet-Lite.
    """
    repo_id, revision = _parse(source)
    download = _downloader(source, repo_id, revision)
    try:
        config_path = download(_CONFIG)
    except _Missing:
        raise HubError(f"{source}: repository {repo_id} has no {_CONFIG}; only timm model repositories load") from None
    config = _read_config(source, config_path)
    arch = config["architecture"]
    if not isinstance(arch, str) or not _ARCH.fullmatch(arch):
        raise HubError(
            f"{source}: architecture {arch!r} is not supported; only timm EfficientNet / EfficientNet-Lite / "
            "EfficientNetV2 weights load ((tf_)efficientnet_b0..b8, _l2, _lite0..4; tf_efficientnetv2_s/m/l/xl/b0..b3, "
            "efficientnetv2_s/m/l/xl)"
        )
    cfg = config.get("pretrained_cfg") or {}
    if not isinstance(cfg, dict):
        raise HubError(f"{source}: {_CONFIG} pretrained_cfg must be a JSON object, got {type(cfg).__name__}")
    num_classes = config.get("num_classes", cfg.get("num_classes"))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise HubError(f"{source}: {_CONFIG} num_classes must be an int >= 0, got {num_classes!r}")
    tag = cfg.get("tag")
    if tag is None and repo_id.split("/")[1].startswith(arch + "."):  # timm repos are named <arch>.<tag>
        tag = repo_id.split("/")[1][len(arch) + 1 :]
    if tag is not None and (not isinstance(tag, str) or not _TAG.fullmatch(tag)):
        raise HubError(f"{source}: {_CONFIG} pretrained_cfg.tag must be a word such as 'ra_in1k', got {tag!r}")
    labels = config.get("label_names")
    ok = isinstance(labels, list) and len(labels) == num_classes and all(isinstance(n, str) for n in labels)

    try:
        weights = download(_SAFETENSORS)
    except (_Missing, _NotCached) as first:
        # No safetensors in the repo, or (offline) none in the cache: there the cache is all that is known of the
        # repo, and a cached pytorch_model.bin holds the same repo's weights
        try:
            weights = download(_BIN)
        except _Missing:
            raise HubError(
                f"{source}: repository {repo_id} has neither {_SAFETENSORS} nor {_BIN}; it holds no timm weights"
            ) from None
        except _NotCached:
            if isinstance(first, _NotCached):
                raise first from None
            raise
    return HubWeights(
        repo_id=repo_id,
        weights_path=weights,
        architecture=arch,
        model_name=f"{arch}.{tag}" if tag else arch,
        num_classes=num_classes,
        pretrained_cfg=cfg,
        label_names=tuple(labels) if ok else None,
    )


def hub_preprocessing(hub: HubWeights, spec: ModelSpec) -> Preprocessing:
    """timm's pretrained_cfg as effnet's preprocessing; absent fields keep `default_preprocessing(spec)`'s.

    Raises:
        HubError: a field of the wrong type or value, naming the repo and the field.
    """
    cfg, base = hub.pretrained_cfg, default_preprocessing(spec)

    def bad(field: str, why: str) -> HubError:
        return HubError(f"{PREFIX}{hub.repo_id}: config.json pretrained_cfg.{field} {why}")

    fields: dict = {}
    if "input_size" in cfg:
        size = cfg["input_size"]
        if (
            not isinstance(size, (list, tuple))
            or not size
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
        ):
            raise bad("input_size", f"must be a list of ints >= 1 such as [3, 224, 224], got {size!r}")
        # (C, H, W). effnet's Preprocessing has one side: a non-square size (rare; timm would crop H x W) takes W
        fields["resolution"] = size[-1]
    if "crop_pct" in cfg:
        fields["crop_pct"] = cfg["crop_pct"]
    if "interpolation" in cfg:
        interp = cfg["interpolation"]
        if not isinstance(interp, str):
            raise bad("interpolation", f"must be a string, got {interp!r}")
        # timm also knows "random" (a training choice), "lanczos", "hamming" and "box", which effnet's resize does
        # not; bicubic is timm's own EfficientNet default and the closest of the three to the filtered kernels
        fields["interpolation"] = interp if interp in _INTERPOLATIONS else "bicubic"
    for name in ("mean", "std"):
        if name in cfg:
            values = cfg[name]
            if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            ):
                raise bad(name, f"must be a list of finite numbers, got {values!r}")
            if len(values) not in (3, spec.in_channels):
                raise bad(name, f"has {len(values)} value(s); expected 3 (RGB) or {spec.in_channels} (one per channel)")
            # RGB values for a model with another channel count are taken in turn, as default_preprocessing does
            fields[name] = tuple(values[i % len(values)] for i in range(spec.in_channels))
    if hub.label_names is not None and len(hub.label_names) == spec.num_classes:
        fields["class_names"] = hub.label_names
    else:
        fields["class_names"] = imagenet_class_names() if spec.num_classes == 1000 else None
    try:
        return replace(base, **fields)
    except ValueError as e:  # Preprocessing checks every value and names the field
        field = str(e).removeprefix("Preprocessing: ")
        raise HubError(f"{PREFIX}{hub.repo_id}: config.json pretrained_cfg.{field}") from None
