"""Small serialisable option objects for one convert or eval call: what `edgekit convert` / `edgekit eval` flags
and a lab file's model entries map to, so a sweep can hand a whole call to another process or host as data.

Paths stay strings (absolute once a lab file is read); nothing here imports torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ConvertOptions:
    """Everything `edgekit convert` takes besides the model and the targets (same names as its flags)."""

    calib: str | None = None
    calib_samples: int = 200
    calib_method: str | None = None
    calib_spec: str | None = None
    val_data: str | None = None
    val_samples: int | None = None
    input_shape: tuple[str, ...] = ()
    input_dtype: tuple[str, ...] = ()
    input_range: tuple[str, ...] = ()
    state_input: tuple[str, ...] = ()
    bind: tuple[str, ...] = ()
    output: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    weights: str | None = None
    trust_pickle: bool = False
    channels_last: bool = False
    max_accuracy_drop: float | None = None
    data: str | None = None  # the accuracy budget's labelled data
    labels_key: str | None = None
    budget_s: float = 600.0
    preprocess: str | None = None  # an image input's preprocessing spec for apps (calibration/*.toml name or path)
    labels: str | None = None  # a text file of class labels, one per line

    def to_dict(self) -> dict:
        return asdict(self)

    def data_sources(self) -> dict[str, str]:
        """The options that name data or weights (what a content key hashes)."""
        return {k: v for k, v in (("calib", self.calib), ("val_data", self.val_data), ("weights", self.weights),
                                   ("data", self.data), ("labels", self.labels), ("preprocess", self.preprocess)) if v}

    def load(self, model: str | None):
        """The model as `edgekit convert` loads it (ModelSpec), with these input options."""
        from edgekit.inputs import InputOptions, parse_shapes
        from edgekit.sources import load_model

        shapes, named = parse_shapes(self.input_shape)
        inputs = InputOptions.from_cli(shapes, self.input_dtype, self.input_range, self.state_input, self.bind, named_shapes=named)
        return load_model(model, weights=self.weights, trust_pickle=self.trust_pickle, inputs=inputs)

    def convert_kwargs(self) -> dict:
        """Keyword arguments of edgekit.pipeline.convert_many for these options."""
        from edgekit.validate import declared_kinds

        return dict(calibration=self.calib, calib_samples=self.calib_samples, calib_method=self.calib_method,
                    calib_spec=self.calib_spec, validation=self.val_data, val_samples=self.val_samples,
                    channels_last=self.channels_last, max_accuracy_drop=self.max_accuracy_drop, budget_data=self.data,
                    labels_key=self.labels_key, budget_s=self.budget_s, outputs=declared_kinds(self.output, self.state),
                    preprocess=self.preprocess, labels=self.labels)


@dataclass(frozen=True)
class EvalOptions:
    """What `edgekit eval` takes besides the artifact and the device."""

    data: str
    labels_key: str | None = None
    data_spec: str | None = None
    samples: int | None = None
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["ConvertOptions", "EvalOptions"]
