"""The plugin system: every hook documented and tested, loading controls, and a real third-party plugin."""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from movie_core import cli as cli_module
from movie_core import hookspecs, plugins
from movie_core.composer import compose
from movie_core.hookspecs import hookimpl
from movie_core.recipe import Recipe
from movie_core.registry import ComponentSpec, DuplicateComponentError

from cli_helpers import pip_install_fixture

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugin_hooks.md"
FIXTURE_PLUGIN = Path(__file__).resolve().parent / "fixtures" / "thirdparty_plugin"
HOOK_NAMES = sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, "movie_spec"))
THIS_MODULE = __name__


@pytest.fixture(autouse=True)
def _fresh_plugins(clean_plugins):
    """Every test starts from freshly loaded plugins and leaves none of its own behind."""


@pytest.fixture
def cli_commands(monkeypatch):
    """Commands added to the global `movie` group during the test are removed afterwards."""
    monkeypatch.setattr(cli_module.cli, "commands", dict(cli_module.cli.commands))
    return cli_module.cli.commands


def add_plugin(plugin: object, name: str):
    """Register a plugin object on the current plugin manager, as an entry point would be."""
    pm = plugins.get_plugin_manager()
    pm.register(plugin, name=name)
    pm.check_pending()
    return pm


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """`movie ARGS` through main(), as the console script runs it: (exit status, stdout, stderr)."""
    try:
        cli_module.main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def spec_row(family: str, name: str) -> dict:
    """`movie list FAMILY --json`'s row for one component."""
    result = CliRunner().invoke(cli_module.cli, ["list", family, "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert name in rows, f"{name} not listed: {sorted(rows)}"
    return rows[name]


def build_toy(ctx, config):
    """A factory the toy specs can name: compose imports every factory, so it must exist."""
    raise AssertionError("the hook tests compose, they never build")


class ToyBackend:
    """A backend that runs modules unchanged and says so."""

    @staticmethod
    def available() -> tuple[bool, str]:
        return True, "toy backend, always here"

    def prepare(self, module, example_inputs=(), options=None):
        return module


# --- one test per hook ---------------------------------------------------------------------


def test_hook_movie_register_autoencoders():
    class Plugin:
        @hookimpl
        def movie_register_autoencoders(self, registry):
            registry.register(family="autoencoder", name="toy-ae", summary="toy", factory=f"{THIS_MODULE}:build_toy",
                              latent_space="sd1")

    add_plugin(Plugin(), "toy-autoencoders")
    spec = plugins.get_registry().get("autoencoder", "toy-ae")
    assert (spec.plugin, spec.latent_space) == ("toy-autoencoders", "sd1")
    assert "taesd" in plugins.get_registry().names("autoencoder")
    comp = compose(Recipe(encoder="toy-ae", decoder="taesd"))
    assert comp.describe()["encoder"]["plugin"] == "toy-autoencoders"
    assert spec_row("autoencoder", "toy-ae")["plugin"] == "toy-autoencoders"


def test_hook_movie_register_denoisers():
    class Plugin:
        @hookimpl
        def movie_register_denoisers(self, registry):
            registry.register(ComponentSpec(family="denoiser", name="toy-denoiser", summary="toy",
                                            factory=f"{THIS_MODULE}:build_toy", extra={"latent_space": "sd1"}))

    add_plugin(Plugin(), "toy-denoisers")
    spec = plugins.get_registry().get("denoiser", "toy-denoiser")
    assert spec.plugin == "toy-denoisers"
    comp = compose(Recipe(denoiser="toy-denoiser"))
    assert comp.describe()["denoiser"] == {"name": "toy-denoiser", "plugin": "toy-denoisers", "version": ""}


def test_hook_movie_register_distillers():
    class Plugin:
        @hookimpl
        def movie_register_distillers(self, registry):
            registry.register(ComponentSpec(family="distiller", name="toy-distill", summary="toy distiller",
                                            factory=f"{THIS_MODULE}:build_toy"))

    add_plugin(Plugin(), "toy-distillers")
    assert plugins.get_registry().get("distiller", "toy-distill").plugin == "toy-distillers"
    row = spec_row("distiller", "toy-distill")
    assert (row["plugin"], row["summary"]) == ("toy-distillers", "toy distiller")


def test_hook_movie_register_backends():
    class Plugin:
        @hookimpl
        def movie_register_backends(self, registry):
            registry.register(ComponentSpec(family="backend", name="toy", summary="toy backend",
                                            factory=f"{THIS_MODULE}:ToyBackend"))

    add_plugin(Plugin(), "toy-backends")
    spec = plugins.get_registry().get("backend", "toy")
    assert spec.plugin == "toy-backends"
    assert spec.load_factory() is ToyBackend
    comp = compose(Recipe(backend="toy"))
    assert comp.backend_available() == (True, "toy backend, always here")
    assert comp.describe()["backend"]["plugin"] == "toy-backends"


def test_hook_movie_register_commands(cli_commands, capsys):
    class Plugin:
        @hookimpl
        def movie_register_commands(self, cli):
            @cli.command()
            @click.option("--name", default="world")
            def hello(name):
                """Say hello."""
                click.echo(f"hello {name}")

    add_plugin(Plugin(), "toy-commands")
    cli_module.main(["hello", "--name", "plugin"])
    assert capsys.readouterr().out == "hello plugin\n"
    assert "hello" in cli_commands
    result = CliRunner().invoke(cli_module.cli, ["hello"])
    assert (result.exit_code, result.output) == (0, "hello world\n")
    assert "movie_register_commands" in {h for row in plugins.plugin_info() if row["name"] == "toy-commands"
                                         for h in row["hooks"]}


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_is_documented_and_tested(hook):
    assert len(HOOK_NAMES) >= 5
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    docs = DOCS.read_text()
    assert re.search(rf"^## {re.escape(hook)}\({re.escape(args)}\)\s*$", docs, re.M), (
        f"{DOCS} has no section '## {hook}({args})'"
    )
    assert callable(globals().get(f"test_hook_{hook}")), f"{__name__} has no test_hook_{hook}"


# --- loading rules -------------------------------------------------------------------------


def test_misspelled_hook_is_an_error_naming_the_plugin(monkeypatch, capsys):
    typo = types.ModuleType("movie_typo_plugin")

    @hookimpl
    def movie_register_autoencoder(registry):
        """One letter short of movie_register_autoencoders: pluggy alone would ignore it."""

    typo.movie_register_autoencoder = movie_register_autoencoder
    monkeypatch.setitem(sys.modules, typo.__name__, typo)
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + (typo.__name__,))
    with pytest.raises(plugins.PluginError, match="movie_typo_plugin") as info:
        plugins.get_registry()
    assert "movie_register_autoencoder" in str(info.value)

    assert "did you mean 'movie_register_autoencoders'?" in str(info.value)
    assert "MOVIE_BLOCK_PLUGINS=movie_typo_plugin" in str(info.value)

    plugins.reset()
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(["list"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.startswith("movie: error: plugin 'movie_typo_plugin'") and err.count("\n") == 1
    assert "did you mean 'movie_register_autoencoders'?" in err
    row = next(r for r in plugins.plugin_info() if r["name"] == typo.__name__)
    assert "movie_register_autoencoder'" in row["error"] and row["hooks"] == []


def test_duplicate_names_name_both_plugins():
    def make(tag):
        class Plugin:
            @hookimpl
            def movie_register_autoencoders(self, registry):
                registry.register(family="autoencoder", name="twin-ae", summary=tag, factory="twin:build")

        return Plugin()

    add_plugin(make("first"), "first-plugin")
    add_plugin(make("second"), "second-plugin")
    with pytest.raises(DuplicateComponentError) as info:
        plugins.get_registry()
    message = str(info.value)
    assert "autoencoder 'twin-ae'" in message
    assert "'first-plugin'" in message and "'second-plugin'" in message


def test_duplicate_of_a_builtin_names_the_builtin():
    class Plugin:
        @hookimpl
        def movie_register_autoencoders(self, registry):
            registry.register(family="autoencoder", name="taesd", summary="impostor", factory="x:y")

    add_plugin(Plugin(), "impostor")
    with pytest.raises(DuplicateComponentError, match=r"movie_plugins\.autoencoders\.taesd.*impostor"):
        plugins.get_registry()


def test_block_plugins_hides_a_builtin(monkeypatch):
    assert "taesd" in plugins.get_registry().names("autoencoder")
    monkeypatch.setenv("MOVIE_BLOCK_PLUGINS", "movie_plugins.autoencoders.taesd, movie_plugins.backends.eager")
    plugins.reset()
    assert plugins.get_registry().names("autoencoder") == ["md-vae", "sd-vae"]
    assert "eager" not in plugins.get_registry().names("backend")
    assert "onnx" in plugins.get_registry().names("backend")
    names = {row["name"] for row in plugins.plugin_info()}
    assert "movie_plugins.autoencoders.taesd" not in names
    assert "movie_plugins.autoencoders.sd_vae" in names


def test_hooks_are_called_through_pluggy_with_only_the_arguments_an_implementation_takes():
    calls: list[str] = []

    class NoArguments:
        @hookimpl
        def movie_register_backends(self):
            calls.append("no arguments")

    class Registering:
        @hookimpl
        def movie_register_backends(self, registry):
            calls.append("registry")
            registry.register(family="backend", name="toy", summary="toy backend", factory=f"{THIS_MODULE}:ToyBackend")

    add_plugin(NoArguments(), "no-arguments")
    add_plugin(Registering(), "registering")
    registry = plugins.get_registry()
    assert sorted(calls) == ["no arguments", "registry"]
    assert registry.get("backend", "toy").plugin == "registering"  # provenance: the plugin whose hook ran
    assert registry.get("backend", "eager").plugin == "movie_plugins.backends.eager"


@pytest.mark.parametrize("family, flag", [("autoencoder", "--vae"), ("denoiser", "--denoiser"),
                                          ("backend", "--backend"), ("distiller", None)])
@pytest.mark.parametrize("factory, cause", [
    ("movie_no_such_module:build", "ModuleNotFoundError: No module named 'movie_no_such_module'"),
    (f"{THIS_MODULE}:no_such_factory", f"module '{THIS_MODULE}' has no attribute 'no_such_factory'"),
])
def test_a_factory_that_does_not_import_is_one_line_at_compose_time(family, flag, factory, cause, cli_commands,
                                                                      capsys, tmp_path):
    class BadFactory:
        @hookimpl
        def movie_register_autoencoders(self, registry):
            registry.register(family="autoencoder", name="bad-ae", summary="bad", factory=factory, latent_space="sd1")

        @hookimpl
        def movie_register_denoisers(self, registry):
            registry.register(family="denoiser", name="bad-denoiser", summary="bad", factory=factory)

        @hookimpl
        def movie_register_backends(self, registry):
            registry.register(family="backend", name="bad-backend", summary="bad", factory=factory)

        @hookimpl
        def movie_register_distillers(self, registry):
            registry.register(family="distiller", name="bad-distiller", summary="bad", factory=factory)

    add_plugin(BadFactory(), "bad-factories")
    name = {"autoencoder": "bad-ae"}.get(family, f"bad-{family}")
    if flag is None:  # a distiller is chosen by `movie distill`, before the teacher or data are looked at
        args = ["distill", name, "--teacher", str(tmp_path / "t"), "--data", str(tmp_path / "d"),
                "--out", str(tmp_path / "out")]
    else:
        args = ["compose", flag, name]
    line = f"movie: error: plugin 'bad-factories': {family} '{name}': cannot import factory '{factory}': {cause}\n"
    assert run_main(capsys, *args) == (1, "", line)
    assert not (tmp_path / "out").exists()


def fake_distribution(root: Path, dist: str, version: str, entry_points: dict[str, str],
                      modules: dict[str, str]) -> Path:
    """A minimal installed distribution (dist-info with entry points, plus top-level modules) under root."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[movie]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for module, code in modules.items():
        (root / f"{module}.py").write_text(code)
    return root


@pytest.fixture
def on_path(monkeypatch):
    """Put a folder on sys.path for the entry-point scan; forget the modules imported from it afterwards."""
    added: list[Path] = []

    def put(root: Path) -> Path:
        monkeypatch.syspath_prepend(str(root))
        added.append(root)
        return root

    yield put
    for name, mod in list(sys.modules.items()):
        if any(str(root) in str(getattr(mod, "__file__", "") or "") for root in added):
            del sys.modules[name]


BROKEN_PLUGIN = "raise ImportError('needs the frobnicate package')\n"


def test_a_plugin_that_fails_to_import_is_listed_as_broken(tmp_path, on_path, cli_commands, capsys):
    on_path(fake_distribution(tmp_path, "movie-plugin-broken", "1.3", {"broken": "movie_broken_plugin"},
                              {"movie_broken_plugin": BROKEN_PLUGIN}))
    hint = "(set MOVIE_BLOCK_PLUGINS=broken to run without it)"
    why = "plugin 'broken' failed to load: ImportError: needs the frobnicate package"

    for args in (["--help"], ["--version"], ["plugins"]):
        code, out, err = run_main(capsys, *args)
        assert (code, err) == (0, ""), args
    assert f"broken 1.3 [entry point]: BROKEN: {why} {hint}\n" in out
    rows = {row["name"]: row for row in json.loads(run_main(capsys, "plugins", "--json")[1])}
    assert rows["broken"] == {"name": "broken", "version": "1.3", "source": "entry point", "hooks": [],
                              "error": f"{why} {hint}"}
    assert "movie_register_autoencoders" in rows["movie_plugins.autoencoders.taesd"]["hooks"]

    for args in (["list"], ["compose"]):  # commands that need the registry stop with that line
        assert run_main(capsys, *args) == (1, "", f"movie: error: {why} {hint}\n"), args
    with pytest.raises(plugins.PluginError, match="MOVIE_BLOCK_PLUGINS=broken"):
        plugins.get_registry()


def test_blocking_a_broken_plugin_by_name_lets_movie_run(tmp_path, on_path, monkeypatch, capsys):
    on_path(fake_distribution(tmp_path, "movie-plugin-broken", "1.3", {"broken": "movie_broken_plugin"},
                              {"movie_broken_plugin": BROKEN_PLUGIN}))
    monkeypatch.setenv("MOVIE_BLOCK_PLUGINS", "broken")
    assert "taesd" in plugins.get_registry().names("autoencoder")
    assert "broken" not in {row["name"] for row in plugins.plugin_info()}
    assert capsys.readouterr().err == ""  # a name that matches a plugin: no warning


def test_block_plugins_warns_about_names_that_match_no_plugin(tmp_path, on_path, monkeypatch, capsys):
    plugin = ("from movie_core.hookspecs import hookimpl\n\n@hookimpl\ndef movie_register_backends(registry):\n"
              "    registry.register(family='backend', name='toy', summary='toy', "
              f"factory='{THIS_MODULE}:ToyBackend')\n")
    on_path(fake_distribution(tmp_path, "movie-plugin-toy", "0.1", {"toy": "movie_toy_plugin"},
                              {"movie_toy_plugin": plugin}))
    monkeypatch.setenv("MOVIE_BLOCK_PLUGINS", "movie-plugin-toy,taesd")
    registry = plugins.get_registry()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "movie: warning: MOVIE_BLOCK_PLUGINS names no plugin: 'movie-plugin-toy' (the distribution of plugin 'toy'), "
        "'taesd'; plugins: toy, movie_plugins.autoencoders.sd_vae, movie_plugins.autoencoders.taesd, ")
    assert registry.get("backend", "toy").plugin == "toy"  # nothing was blocked
    assert registry.get("backend", "toy").version == "0.1"
    assert "taesd" in registry.names("autoencoder")


# --- a real third-party plugin, installed with pip -------------------------------------------


@pytest.fixture(scope="session")
def example_plugin_dir(tmp_path_factory) -> Path:
    """tests/fixtures/thirdparty_plugin pip-installed into a temporary --target folder."""
    target = pip_install_fixture(FIXTURE_PLUGIN, tmp_path_factory)
    assert (target / "movie_example_plugin" / "plugin.py").is_file()
    return target


@pytest.fixture
def example_plugin_on_path(example_plugin_dir, monkeypatch):
    """The installed example plugin visible to this process's entry-point scan."""
    monkeypatch.syspath_prepend(str(example_plugin_dir))
    yield example_plugin_dir
    for name in [m for m in sys.modules if m == "movie_example_plugin" or m.startswith("movie_example_plugin.")]:
        del sys.modules[name]


def test_thirdparty_plugin_installed_with_pip(example_plugin_dir, run_movie):
    proc = run_movie("plugins", "--json", pythonpath=example_plugin_dir)
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["example"] == {"name": "example", "version": "0.2.0", "source": "entry point",
                               "hooks": ["movie_register_autoencoders"]}
    assert set(plugins.DEFAULT_PLUGINS) < set(rows)

    proc = run_movie("list", "autoencoder", "--json", pythonpath=example_plugin_dir)
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert {k: rows["example-ae"][k] for k in ("plugin", "version", "latent_space")} == {
        "plugin": "example", "version": "0.2.0", "latent_space": "sd1"}

    proc = run_movie("compose", "--encoder", "example-ae", "--decoder", "example-ae",
                     "--denoiser", "mobile-pix2pix-1step", "--json", pythonpath=example_plugin_dir)
    assert proc.returncode == 0, proc.stderr
    desc = json.loads(proc.stdout)
    for slot in ("encoder", "decoder"):
        assert desc[slot] == {"name": "example-ae", "plugin": "example", "version": "0.2.0"}
    assert desc["denoiser"]["plugin"] == "movie_plugins.denoisers.mobile_pix2pix_1step"

    for env in ({"MOVIE_DISABLE_PLUGIN_AUTOLOAD": "1"}, {"MOVIE_BLOCK_PLUGINS": "example"}):
        proc = run_movie("plugins", "--json", env=env, pythonpath=example_plugin_dir)
        assert proc.returncode == 0, proc.stderr
        names = {row["name"] for row in json.loads(proc.stdout)}
        assert "example" not in names and "movie_plugins.autoencoders.taesd" in names, env
        proc = run_movie("compose", "--vae", "example-ae", env=env, pythonpath=example_plugin_dir)
        assert proc.returncode == 2, env
        assert proc.stderr.startswith(
            "movie: error: unknown autoencoder 'example-ae'; available: md-vae, sd-vae, taesd")


def test_disable_autoload_hides_thirdparty_plugin(example_plugin_on_path, monkeypatch):
    assert plugins.get_registry().get("autoencoder", "example-ae").plugin == "example"
    monkeypatch.setenv("MOVIE_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset()
    assert plugins.get_registry().names("autoencoder") == ["md-vae", "sd-vae", "taesd", "taesd-lite"]
    assert "example" not in {row["name"] for row in plugins.plugin_info()}


def test_thirdparty_autoencoder_honours_the_contract(example_plugin_on_path, tmp_path):
    import torch

    from movie_core.components import Autoencoder, BuildContext

    spec = plugins.get_registry().get("autoencoder", "example-ae")
    build = spec.load_factory()
    ae = build(BuildContext(seed=3), spec.make_config())
    assert isinstance(ae, Autoencoder) and ae.latent_space == "sd1"
    images = torch.rand(2, 3, 64, 48) * 2 - 1
    latents = ae.encode(images)
    assert latents.shape == (2, 4, 8, 6)
    decoded = ae.decode(latents)
    assert decoded.shape == images.shape and decoded.abs().max() <= 1

    ae.save_pretrained(tmp_path)
    files = list(tmp_path.rglob("*.safetensors"))
    assert [f.relative_to(tmp_path).parts[0] for f in files] == ["example_ae"]
    reloaded = build(BuildContext(seed=4, weights=tmp_path), None)
    torch.testing.assert_close(reloaded.encode(images), latents)
    assert build(BuildContext(meta=True), None).to_latent.weight.device.type == "meta"


def test_builtin_subcommands_live_in_one_package_and_plugins_never_import_the_cli():
    """Every built-in command plugin is a module of movie_plugins.commands; no plugin imports movie_core.cli (the
    module that loads the plugins): plugin commands take the shared flags from movie_core.options."""
    import ast

    adders = {row["name"] for row in plugins.plugin_info() if "movie_register_commands" in row["hooks"]
              and row["name"] in plugins.DEFAULT_PLUGINS}
    assert adders and all(name.startswith("movie_plugins.commands.") for name in adders), adders
    offenders = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("movie_core.cli")]
    assert not offenders, offenders
