"""The one home of every fact about an explanation method (timm's ``register_model`` is the model).

A method file registers its function beside it, in one decorator:

>>> @method("saliency", "Saliency", kind="gradient", streamable=True, in_report=0, class_average=True,
...         paper=Paper("Simonyan, Vedaldi & Zisserman", 2014, "Deep inside convolutional networks: ..."))
... def saliency(model, images, target=None, *, reduce="max_abs"): ...

and everything else asks the registry, never a table of its own: the runner (``run_methods``) and
the CLI's ``--methods`` (:func:`names`, in registration order), the report's labels, colours, default
methods and contrastive view (:func:`get`), faithfulness's perturbation methods
(``names(kind="perturbation")``), streaming (``names(streamable=True)``) and the commands' default
options (:func:`default_options`); ``cnnlens methods`` lists them all, with their papers (:class:`Paper`).
``cnnlens.explain`` imports the method modules, so importing it registers the built-in methods; a method of
your own is registered by importing its module (``docs/adding-a-method.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch

from cnnlens._checks import is_int

MethodFn = Callable[..., torch.Tensor]
Kind = Literal["gradient", "cam", "perturbation"]
#: gradient: a derivative of the class score w.r.t. the input; cam: a map from a layer's activations
#: (upsampled); perturbation: the model's outputs on changed copies of the image (hundreds of passes each).
KINDS: tuple[str, ...] = ("gradient", "cam", "perturbation")
#: How the report colours a map: ``auto`` by its sign (one colour if it never goes negative), ``lime``
#: LIME's green for / red against, ``relative`` one colour scaled from the map's own minimum (a map whose
#: zero means nothing: RISE's expected probability sits at about p(target) everywhere, FullGrad sums
#: parts each scaled to [0,1]).
STYLES: tuple[str, ...] = ("auto", "lime", "relative")


@dataclass(frozen=True)
class Paper:
    """Where a method comes from: ``Paper("Selvaraju et al.", 2017, "Grad-CAM: visual explanations from deep
    networks via gradient-based localization")``. A method that is cnnlens's own composition of published
    ones says so with :meth:`own` (no year).

    >>> Paper("Zhou et al.", 2016, "Learning deep features for discriminative localization").cite
    'Zhou et al. 2016'
    """

    authors: str
    year: int | None
    title: str

    def __post_init__(self) -> None:
        if not isinstance(self.authors, str) or not self.authors.strip():
            raise ValueError(f"Paper.authors must name the authors ('Selvaraju et al.'), got {self.authors!r}")
        if not isinstance(self.title, str) or not self.title.strip():
            raise ValueError(f"Paper.title must be the paper's title, got {self.title!r}")
        if self.year is None and self.authors != OWN:
            raise ValueError(f"Paper.year must be the year it appeared (an int such as 2017), got None; a method of "
                             f"cnnlens's own making says so with Paper.own('what it combines')")
        if self.year is not None and not (is_int(self.year) and 1900 <= self.year <= 2100):
            raise ValueError(f"Paper.year must be the year it appeared (an int such as 2017), got {self.year!r}")

    @classmethod
    def own(cls, what: str) -> Paper:
        """A method cnnlens composed itself, ``what`` saying of what (``"occlusion with superpixels for patches"``)."""
        return cls(OWN, None, what)

    @property
    def cite(self) -> str:
        """The short form: ``"Selvaraju et al. 2017"``, or ``"cnnlens's own"``."""
        return f"{self.authors} {self.year}" if self.year is not None else f"{OWN}'s own"

    def __str__(self) -> str:
        return f"{self.cite}, {self.title}" if self.year is not None else f"{self.cite}: {self.title}"


#: :attr:`Paper.authors` of a method cnnlens composed itself (:meth:`Paper.own`).
OWN = "cnnlens"


@dataclass(frozen=True)
class Method:
    """Everything cnnlens knows about one explanation method.

    Attributes:
        name: the CLI name (``"grad-cam"``), unique.
        label: a person's name for it, shown in the report (``"Grad-CAM"``).
        fn: ``fn(model, images[N,C,H,W], target=None, **options) -> [N,H,W]``.
        kind: ``gradient``, ``cam`` or ``perturbation`` (:data:`KINDS`); faithfulness runs perturbation
            methods on fewer images and leaves them out of the randomisation check.
        help: one line saying what it is (default: the first paragraph of ``fn``'s docstring, on one line).
        layer: takes a ``layer=`` naming a module (Grad-CAM): passed by name across the model's fast copy.
        streamable: ``cnnlens.explain.stream.stream_explain`` takes it by name (constant-memory, whole splits).
        result: a richer result function with the same call (LIME's ``lime_explain``: segments and weights),
            whose signature also gives the options of an ``fn`` that forwards ``**options``; or None.
        options: the options ``cnnlens explain`` and ``cnnlens report`` pass unless told otherwise, each
            with its reason in the method's file (the library function keeps its paper's defaults).
        style: how the report colours its maps (:data:`STYLES`).
        in_report: its place among ``cnnlens report``'s default methods (None: only when asked for).
        class_average: among the report's default class-average methods (cheap ones: one pass per image).
        contrastive: its rank as the report's contrastive view of a mistake (lower first; None: never).
        paper: where the method comes from (:class:`Paper`; every built-in method names one, ``cnnlens methods``
            shows it); None for a method of your own that names none.
    """

    name: str
    label: str
    fn: MethodFn
    kind: str
    help: str = ""
    layer: bool = False
    streamable: bool = False
    result: Callable[..., Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    style: str = "auto"
    in_report: int | None = None
    class_average: bool = False
    contrastive: int | None = None
    paper: Paper | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip() or "," in self.name:
            raise ValueError(f"method name must be a non-empty string without commas or surrounding spaces "
                             f"(a CLI name such as 'grad-cam'), got {self.name!r}")
        if self.name.lower() == "all":
            raise ValueError("method name 'all' is reserved: --methods all means every method")
        if not callable(self.fn):
            raise TypeError(f"method {self.name!r}: fn must be callable (model, images, target=...) -> [N,H,W], "
                            f"got {type(self.fn).__name__}")
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.style not in STYLES:
            raise ValueError(f"method {self.name!r}: style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.result is not None and not callable(self.result):
            raise TypeError(f"method {self.name!r}: result must be a function or None, got {type(self.result).__name__}")
        for name in ("in_report", "contrastive"):
            v = getattr(self, name)
            if v is not None and not is_int(v):
                raise TypeError(f"method {self.name!r}: {name} must be an int or None, got {v!r}")
        if self.paper is not None and not isinstance(self.paper, Paper):
            raise TypeError(f"method {self.name!r}: paper must be a registry.Paper(authors, year, title) or None, "
                            f"got {self.paper!r}")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"method {self.name!r}: options must be a dict of keyword arguments, got {self.options!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))  # frozen all the way down
        if not self.help:
            doc = (getattr(self.fn, "__doc__", None) or "").strip().split("\n\n")[0]  # the first paragraph
            object.__setattr__(self, "help", " ".join(doc.split()) or self.label)


_METHODS: dict[str, Method] = {}  # name -> Method, in registration order


def register(spec: Method, *, replace: bool = False) -> Method:
    """Add ``spec`` to the registry (at the end of the order); a name already taken is an error unless
    ``replace=True``, which keeps the method's place."""
    if not isinstance(spec, Method):
        raise TypeError(f"register takes a registry.Method, got {type(spec).__name__}; "
                        "to register a function use the @method(...) decorator")
    if spec.name in _METHODS and not replace:
        raise ValueError(f"method {spec.name!r} is already registered (by {_METHODS[spec.name].fn.__module__}); "
                         "choose another name, or pass replace=True")
    _METHODS[spec.name] = spec
    return spec


def method(name: str, label: str, *, kind: str, help: str = "", layer: bool = False, streamable: bool = False,
           result: Callable[..., Any] | None = None, options: Mapping[str, Any] | None = None, style: str = "auto",
           in_report: int | None = None, class_average: bool = False, contrastive: int | None = None,
           paper: Paper | None = None, replace: bool = False) -> Callable[[MethodFn], MethodFn]:
    """Register the decorated function as explanation method ``name`` (facts as :class:`Method`'s);
    the function itself is returned unchanged.

    >>> @method("gradient-x-input", "Gradient x input", kind="gradient", paper=Paper.own("the input times saliency"))
    ... def gradient_x_input(model, images, target=None): ...
    """

    def decorate(fn: MethodFn) -> MethodFn:
        register(Method(name, label, fn, kind, help=help, layer=layer, streamable=streamable, result=result,
                        options=dict(options or {}), style=style, in_report=in_report, class_average=class_average,
                        contrastive=contrastive, paper=paper), replace=replace)
        return fn

    return decorate


def unregister(name: str) -> Method:
    """Remove method ``name`` and return what it was."""
    return _METHODS.pop(get(name).name)


def get(name: str) -> Method:
    """The method called ``name``; an unknown name lists the registered ones."""
    if not isinstance(name, str):
        raise TypeError(f"a method is named by a string such as 'grad-cam', got {type(name).__name__}")
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available methods: {', '.join(_METHODS) or '(none registered)'}")
    return _METHODS[name]


def style_of(name: str) -> str:
    """How the maps of method ``name`` are coloured (its ``style``, :data:`STYLES`); ``auto`` for a name not
    registered (maps of the user's own, say)."""
    return _METHODS[name].style if name in _METHODS else "auto"


def registered(**facts: Any) -> list[Method]:
    """Every registered method, in registration order, or those whose facts equal ``facts``
    (``registered(kind="cam")``, ``registered(streamable=True)``)."""
    unknown = [k for k in facts if k not in Method.__dataclass_fields__]
    if unknown:
        raise TypeError(f"no method fact {unknown[0]!r}; facts: {', '.join(Method.__dataclass_fields__)}")
    return [m for m in _METHODS.values() if all(getattr(m, k) == v for k, v in facts.items())]


def names(kind: str | None = None, **facts: Any) -> list[str]:
    """Names of the registered methods in registration order: all, those of one ``kind``, or those whose
    facts equal ``facts`` (``names(streamable=True)``)."""
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        facts["kind"] = kind
    return [m.name for m in registered(**facts)]


def find(fn: object) -> Method | None:
    """The registered method whose function is ``fn`` (a user may pass ``grad_cam`` itself), or None."""
    return next((m for m in _METHODS.values() if m.fn is fn), None)


def default_options(methods: Iterable[str]) -> dict[str, dict[str, Any]]:
    """A fresh copy of the commands' default options (:attr:`Method.options`) of ``methods`` that have any.

    >>> default_options(["occlusion", "saliency"])
    {'occlusion': {'patch': 5, 'stride': 2, 'fill': 'mean'}}
    """
    return {m: dict(get(m).options) for m in methods if get(m).options}


def functions() -> Mapping[str, MethodFn]:
    """A read-only live view: name -> the method's map function, in registration order."""
    return _FunctionView()


class _FunctionView(Mapping[str, MethodFn]):
    """``cnnlens.explain.METHODS``: the registry seen as name -> function, read when used (never a copy)."""

    def __getitem__(self, name: str) -> MethodFn:
        if name not in _METHODS:
            raise KeyError(name)
        return _METHODS[name].fn

    def __iter__(self) -> Iterator[str]:
        return iter(list(_METHODS))

    def __len__(self) -> int:
        return len(_METHODS)

    def __repr__(self) -> str:
        return f"<cnnlens methods: {', '.join(_METHODS)}>"


@contextlib.contextmanager
def scope(*, empty: bool = False) -> Iterator[None]:
    """Methods registered, replaced or removed inside the block are undone after it; ``empty=True``
    starts the block with no methods at all. For tests and experiments.

    >>> with scope():
    ...     method("toy", "Toy", kind="gradient")(lambda model, images, target=None: images[:, 0])
    """
    saved = dict(_METHODS)
    if empty:
        _METHODS.clear()
    try:
        yield
    finally:
        _METHODS.clear()
        _METHODS.update(saved)
