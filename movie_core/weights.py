"""Model folders: diffusers layout + movie.json manifest; single-file safetensors; the HF cache.

Nothing is unpickled silently.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from movie_core.cleanup import pid_alive
from movie_core.errors import MovieError, UsageError
from movie_core.weight_files import (  # noqa: F401  (re-exported: the reading layer below this module)
    _MAX_HEADER,
    PICKLE_SUFFIXES,
    PickleRefused,
    allow_pickle,
    check_safetensors,
    read_config,
)

MANIFEST = "movie.json"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def use_safetensors() -> bool | None:
    """`use_safetensors` for from_pretrained: True (safetensors only) unless pickles are allowed.

    With pickles allowed it is None: diffusers falls back to .bin files.
    """
    return None if allow_pickle() else True


def check_folder(folder: Path) -> None:
    """Refuse a component folder whose only weights are pickles, unless the user opted in."""
    files = list(folder.iterdir()) if folder.is_dir() else []
    if any(f.suffix == ".safetensors" for f in files):
        return
    pickles = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
    if pickles and not allow_pickle():
        raise PickleRefused(
            f"{folder} holds only pickle weights ({', '.join(sorted(pickles))}); loading them can run arbitrary code. "
            "Convert them to safetensors, or set MOVIE_ALLOW_PICKLE=1 if you trust the file"
        )
    if not pickles:
        raise MovieError(f"{folder} holds no weights (*.safetensors)")


def weights_in(folder: Path, stem: str, variant: str | None = None) -> tuple[list[Path], str | None]:
    """The safetensors files from_pretrained would read in a component folder, and the variant they are.

    stem: 'diffusion_pytorch_model' (diffusers) or 'model' (transformers). With `variant` only that variant is
    taken; without, the plain file, else the one variant the folder holds (fp16 folders, hub caches). Sharded
    weights are read through their index. Anything else is one MovieError saying what the folder holds."""
    folder = Path(folder)
    tags = [variant] if variant else [None] + sorted(_variants(folder, stem))
    for tag in tags:
        name = f"{stem}.{tag}.safetensors" if tag else f"{stem}.safetensors"
        if (folder / name).is_file():
            return [folder / name], tag
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise MovieError(f"{index}: unreadable shard index: {exc}") from None
            return [folder / _safe_name(index, shard, "shard name") for shard in shards], tag
        if not variant and len(tags) > 2:  # several variants and no plain file: the user picks
            found = ", ".join(str(t) for t in tags[1:])
            raise MovieError(f"{folder} holds the weight variants {found} and no plain weights: "
                             "pass --variant NAME")
    have = sorted(f.name for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
    wanted = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    raise MovieError(
        f"{folder} has no {wanted} (it holds {', '.join(have) or 'nothing'})"
        + (
            "; rename the weights file to that name"
            if not variant and any(h.endswith(".safetensors") for h in have)
            else "; leave out --variant to read the plain weights"
            if variant
            else ""
        )
    )


def _variants(folder: Path, stem: str) -> set[str]:
    if not folder.is_dir():
        return set()
    found = set()
    for f in folder.iterdir():
        m = re.fullmatch(re.escape(stem) + r"\.([\w-]+)\.safetensors(\.index\.json)?", f.name)
        if m and not re.fullmatch(r"\d+-of-\d+", m.group(1)):
            found.add(m.group(1))
    return found


def check_component(folder: Path, stem: str, variant: str | None = None) -> dict[str, Any]:
    """Validate a component folder before from_pretrained reads it (config parses, weights present and undamaged,
    pickles refused unless allowed); returns the from_pretrained keywords that pick those weights."""
    folder = Path(folder)
    read_config(folder / "config.json")
    check_folder(folder)
    if not any(f.suffix == ".safetensors" for f in folder.iterdir()):  # pickles only, and the user allowed them
        return {"use_safetensors": use_safetensors(), "variant": variant}
    files, tag = weights_in(folder, stem, variant)
    for f in files:
        check_safetensors(f)
    return {"use_safetensors": True, "variant": tag}


def check_tokenizer(folder: Path) -> None:
    """A tokenizer folder must hold a tokenizer (vocab.json + merges.txt, or tokenizer.json)."""
    folder = Path(folder)
    names = {f.name for f in folder.iterdir()} if folder.is_dir() else set()
    if not ({"vocab.json", "merges.txt"} <= names or "tokenizer.json" in names):
        raise MovieError(f"{folder} holds no tokenizer (vocab.json and merges.txt, or tokenizer.json)")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "vocab.json"):
        if name in names:
            read_config(folder / name)


def check_model_folder(root: Path, variant: str | None = None, only: tuple[str, ...] | None = None) -> list[str]:
    """Cheap checks of a whole model folder without loading tensors: model_index.json, movie.json and every
    component's config parse, weights are present and their safetensors headers sound, tokenizers are not empty.
    only: check just these component folders. Returns the files checked (relative names); a problem is one
    MovieError naming the file."""
    root = Path(root)
    checked: list[str] = []
    for name in ("model_index.json", MANIFEST):
        if (root / name).is_file():
            read_config(root / name)
            checked.append(name)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if only is not None and sub.name not in only:
            continue
        folder = component_folder(root, sub.name)
        if folder is None:
            continue
        names = {f.name for f in folder.iterdir()}
        if sub.name == "tokenizer" or "tokenizer_config.json" in names:
            check_tokenizer(folder)
            checked.append(f"{sub.name}/")
        elif "scheduler_config.json" in names:
            read_config(folder / "scheduler_config.json")
            checked.append(f"{sub.name}/scheduler_config.json")
        elif "config.json" in names:
            stem = "diffusion_pytorch_model" if any(n.startswith("diffusion_pytorch_model") for n in names) else "model"
            check_component(folder, stem, variant)
            files, _ = (
                weights_in(folder, stem, variant) if any(n.endswith(".safetensors") for n in names) else ([], None)
            )
            checked += [f"{sub.name}/config.json"] + [f"{sub.name}/{f.name}" for f in files]
    return checked


def low_memory_kw() -> dict[str, Any]:
    """diffusers' from_pretrained keywords for loading without a random init first: only where accelerate is
    installed (it is not a dependency). Without it diffusers' default (True) warns on every load and falls back."""
    import importlib.util

    return {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Around a from_pretrained call: no transformers "Loading weights" progress bar (restored after) unless the
    user's HF_HUB_DISABLE_PROGRESS_BARS says otherwise, so loading a model through the API is as quiet as
    `movie --no-progress`. Warnings are left alone."""
    if "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        yield
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_checked(what: Path, load: Any) -> Any:
    """Run a from_pretrained call (quietly: quiet_loading); what it raises on a folder that passed the checks becomes
    one line naming it."""
    try:
        with quiet_loading():
            return load()
    except MovieError:
        raise
    except Exception as exc:  # diffusers / transformers raise many kinds
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise MovieError(f"{what}: cannot load: {type(exc).__name__}: {reason}") from None


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The movie.json manifest of a model folder, or None for a plain diffusers folder."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MovieError(f"{path}: unreadable manifest: {exc}") from None


# diffusers pipeline classes whose folders movie runs, and the recipe each starts from (model_index.json)
PIPELINE_PRESETS = {"StableDiffusionInstructPix2PixPipeline": "base"}
# the autoencoder a model_index.json "vae" entry (its class) asks for
VAE_CLASSES = {"AutoencoderKL": "sd-vae", "AutoencoderTiny": "taesd"}


def recipe_from_index(root: Path) -> tuple[str, dict[str, str], str] | None:
    """What a diffusers folder's model_index.json says to run: (preset, slot changes, description), or None when
    the folder has no model_index.json or names a pipeline movie has no recipe for."""
    path = Path(root) / "model_index.json"
    if not path.is_file():
        return None
    index = read_config(path)
    name = index.get("_class_name")
    if name not in PIPELINE_PRESETS:
        return None
    changes: dict[str, str] = {}
    vae = index.get("vae")
    if isinstance(vae, list) and len(vae) == 2 and vae[1] in VAE_CLASSES:
        changes["vae"] = VAE_CLASSES[vae[1]]
    what = f"{name} with {changes['vae']}" if changes else f"{name}"
    return PIPELINE_PRESETS[name], changes, what


def write_manifest(root: Path, data: dict[str, Any]) -> None:
    """Write movie.json beside the component folders."""
    (Path(root) / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def resolve_model(spec: str | Path) -> Path:
    """A model folder from a path, a single .safetensors file, or a repo id in the local HF cache (offline)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if path.suffix == ".safetensors":
            return expand_single_file(path)
        if path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle():
                raise PickleRefused(
                    f"{path} is a pickle checkpoint; loading it can run arbitrary code. "
                    "Use a .safetensors file, or set MOVIE_ALLOW_PICKLE=1 if you trust it"
                )
            return expand_single_file(path)
        raise UsageError(f"{path}: not a model folder or a .safetensors file")
    if str(spec).startswith(BUILTIN_PREFIX):
        stage = str(spec)[len(BUILTIN_PREFIX) :]
        found = builtin_model(stage)
        if found is None:
            have = ", ".join(BUILTIN_PREFIX + s for s in builtin_stages()) or "none installed"
            raise UsageError(f"no built-in model '{spec}'; available: {have}")
        return found
    if _REPO_ID.match(str(spec)):
        return _from_hf_cache(str(spec))
    raise UsageError(f"no such model: {spec}")


BUILTIN_PREFIX = "nano:"
BUILTIN_PACKAGE = "movie_plugins"
BUILTIN_FOLDER = "nano"


def builtin_root() -> Path:
    """Where the shipped nano model family lives: movie_plugins/nano/<stage>/ plus shared autoencoders/."""
    import importlib.util

    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent")
    return Path(next(iter(spec.submodule_search_locations))) / BUILTIN_FOLDER


def builtin_stages() -> list[str]:
    """The denoiser stages whose nano weights ship with the package."""
    root = builtin_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file() and (p / "unet").is_dir())


def builtin_model(stage: str) -> Path | None:
    """The shipped nano model folder of a denoiser stage, or None."""
    return builtin_root() / stage if stage in builtin_stages() else None


def component_folder(root: Path, name: str) -> Path | None:
    """root/name, or where the manifest's "components" map points it (a folder shared by several models).

    Shared folders are resolved relative to the model folder and must stay inside its parent folder; so must a
    component folder that is a symbolic link."""
    folder = Path(root) / name
    if folder.is_dir():
        if not folder.resolve().is_relative_to(Path(root).resolve().parent):
            raise MovieError(f"{folder} is a link to a folder outside {Path(root).parent}: {folder.resolve()}")
        return folder
    manifest = read_manifest(Path(root)) or {}
    rel = (manifest.get("components") or {}).get(name)
    if not rel:
        return None
    target = (Path(root) / rel).resolve()
    if not target.is_relative_to(Path(root).resolve().parent):
        raise MovieError(f"{root}/movie.json points '{name}' outside its parent folder: {rel}")
    return target if target.is_dir() else None


def _from_hf_cache(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        raise UsageError(
            f"no such model: {repo_id} is not a folder and is not in the local Hugging Face cache "
            "(movie never downloads weights; fetch them with `huggingface-cli download` where you have network)"
        ) from None


_SINGLE_FILE_CACHE: dict[Path, Path] = {}
_UNPACK_PREFIX = "movie-model-"


def _safe_name(path: Path, rel: object, what: str) -> str:
    """`rel` if it is a plain relative name that stays inside the folder it is unpacked into; else a MovieError."""
    text = rel if isinstance(rel, str) else ""
    parts = PurePosixPath(text).parts
    if not parts or PurePosixPath(text).is_absolute() or "\\" in text or "\0" in text or ".." in parts:
        raise MovieError(f"{path}: refusing {what} {rel!r}: it names a path outside the model")
    return text


def expand_single_file(path: Path) -> Path:
    """Unpack a single-file model (written by save_single_file) into a private temporary model folder.

    Every name in the file must stay inside that folder; the folder is removed when the process exits."""
    path = path.resolve()
    if path in _SINGLE_FILE_CACHE and _SINGLE_FILE_CACHE[path].is_dir():
        return _SINGLE_FILE_CACHE[path]
    from safetensors import safe_open
    from safetensors.torch import save_file

    from movie_core import ldm

    if path.suffix != ".safetensors":  # a pickle the user opted in to (resolve_model checked): an LDM checkpoint
        return _unpack_ldm(path)
    shapes = check_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "movie.files" not in meta:
            if ldm.is_ldm(shapes):
                return _unpack_ldm(path)
            raise UsageError(
                f"{path}: not a movie single-file model (no 'movie.files' metadata) and not an original "
                f"LDM-layout checkpoint (no {ldm.UNET_PREFIX}* tensors); pass a diffusers-format model folder"
            )
        try:
            files = json.loads(meta["movie.files"])
        except json.JSONDecodeError as exc:
            raise MovieError(f"{path}: unreadable 'movie.files' metadata: {exc}") from None
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise MovieError(f"{path}: 'movie.files' metadata is not a map of file names to text")
        files = {_safe_name(path, rel, "file name"): text for rel, text in files.items()}
        groups: dict[str, dict[str, Any]] = {}
        for key in f.keys():
            sub, sep, name = key.partition("/")
            if not sep or not name:
                raise MovieError(f"{path}: refusing tensor key {key!r}: expected 'component/name'")
            groups.setdefault(_safe_name(path, sub, "tensor key"), {})[name] = f.get_tensor(key)
    root = _private_folder()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for sub, group in groups.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        weight_name = "model.safetensors" if sub == "text_encoder" else "diffusion_pytorch_model.safetensors"
        save_file(group, str(root / sub / weight_name), metadata={"format": "pt"})
    _SINGLE_FILE_CACHE[path] = root
    return root


def _private_folder() -> Path:
    """A new private temporary folder (mode 0700) that is removed when the process exits (and by a later run when
    this process is killed)."""
    remove_stale_unpacked()
    root = Path(tempfile.mkdtemp(prefix=f"{_UNPACK_PREFIX}{os.getpid()}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def _unpack_ldm(path: Path) -> Path:
    """An original LDM-layout checkpoint converted into a private temporary diffusers folder (movie_core.ldm)."""
    from movie_core import ldm

    root = _private_folder()
    try:
        folder = ldm.convert_file(path, root / "model")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    _SINGLE_FILE_CACHE[path] = folder
    return folder


def remove_stale_unpacked() -> None:
    """Remove the unpacked single-file models that processes of this user left in the temp folder when killed."""
    for entry in Path(tempfile.gettempdir()).glob(f"{_UNPACK_PREFIX}*-*"):
        pid = entry.name[len(_UNPACK_PREFIX) :].partition("-")[0]
        try:
            owned = entry.lstat().st_uid == os.getuid() and entry.is_dir() and not entry.is_symlink()
        except OSError:
            continue
        if owned and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def save_single_file(folder: Path, out: Path) -> None:
    """Pack a model folder into one .safetensors file: tensors keyed 'sub/name', config files in metadata."""
    from safetensors.torch import load_file, save_file

    tensors: dict[str, Any] = {}
    files: dict[str, str] = {}
    for item in sorted(folder.rglob("*")):
        if not item.is_file():
            continue
        rel = item.relative_to(folder).as_posix()
        if item.suffix == ".safetensors":
            sub = item.parent.relative_to(folder).as_posix()
            for name, tensor in load_file(str(item)).items():
                tensors[f"{sub}/{name}"] = tensor
        else:
            files[rel] = item.read_text()
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "movie.files": json.dumps(files)})
    tmp.replace(out)


def replace_folder(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place (the old one, if any, goes only after the new one is complete)."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        dest.replace(old)
        tmp.replace(dest)
        shutil.rmtree(old)
    else:
        tmp.replace(dest)
