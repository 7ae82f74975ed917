"""Build step 2, teachers trained elsewhere: a config's teacher spec (the user's PyTorch model, an ONNX model,
or outputs computed elsewhere) turned into a checked, frozen teacher."""
from __future__ import annotations


from distillery.app.config.sections import TeacherSpec
from distillery.app.steps.prepared_data import PreparedData
from distillery.data import BatchIterator
from distillery.errors import ConfigError, ModelError
from distillery.eval.metrics import accuracy, predict
from distillery.messages import note
from distillery.models.huggingface import load_pretrained_classifier
from distillery.teachers.from_config import LoadedTeacher
from distillery.teachers.outputs_table import OutputsTable
from distillery.teachers.user_teacher import load_user_teacher


def load_from_spec(spec: TeacherSpec, data: PreparedData) -> LoadedTeacher:
    """The teacher a spec describes, with metadata like a checkpoint's (its preprocessing, its classes).

    Raises ModelError for a model that fails to build or load, DataError for outputs that do not fit the
    transfer set, ConfigError for outputs where the transfer set does not come from the data's source.
    """
    extra = {"class_names": list(spec.class_names)} if spec.class_names else {}
    if spec.factory is not None:
        model, metadata = load_user_teacher(spec.factory, spec.weights, options=spec.options,
                                            input_shape=data.test.input_shape, num_classes=data.test.num_classes,
                                            class_names=spec.class_names, preprocessing=spec.preprocessing)
        return LoadedTeacher(model, metadata, spec.name)
    if spec.onnx is not None:
        from distillery.teachers.onnx_teacher import load_onnx_teacher  # ONNX Runtime loads slowly; only this needs it

        model, found = load_onnx_teacher(spec.onnx)
        shape, expected = tuple(data.test.input_shape), tuple(found["input_shape"])
        if len(expected) != len(shape) or any(own not in (None, given) for own, given in zip(expected, shape)):
            raise ModelError(f"{spec.onnx} takes inputs of shape {expected} (None: any size) but the data has "
                             f"{shape}; use the data the teacher was trained for")
        classes = found["num_classes"] or (len(spec.class_names) if spec.class_names else data.test.num_classes)
        metadata = {**found, "input_shape": list(shape), "num_classes": classes, "preprocessing": spec.preprocessing,
                    **extra}
        return LoadedTeacher(model, metadata, spec.name)
    if spec.huggingface is not None:
        model, metadata = load_pretrained_classifier(spec.huggingface)
        own = {"preprocessing": spec.preprocessing} if spec.preprocessing is not None else {}
        return LoadedTeacher(model, {**metadata, "input_shape": list(data.test.input_shape), **own, **extra},
                             spec.name)
    if data.train_rows is None:
        raise ConfigError(f"teacher outputs {spec.outputs} are aligned to the data's own training split; a "
                          "transfer set from another source (transfer.dataset) has no rows in it")
    from distillery.teachers.given_outputs import read_teacher_outputs

    logits = read_teacher_outputs(spec.outputs, size=data.source_size, kind=spec.outputs_kind,
                                  id_column=spec.id_column,
                                  ids=list(range(data.source_size)) if spec.id_column else None)
    table = logits[data.train_rows]  # the rows of the transfer set, in its order
    metadata = {"input_shape": list(data.test.input_shape), "num_classes": int(table.shape[1]),
                "preprocessing": None, **extra}
    return LoadedTeacher(OutputsTable(table, spec.outputs), metadata, spec.name)


def report_teacher_accuracy(loaded: LoadedTeacher, data: PreparedData) -> None:
    """Print the teacher's test accuracy on the data as it is fed (its own preprocessing), so that a teacher
    fed the wrong inputs shows at once, before a whole run is spent distilling from it."""
    if "class_names" in loaded.metadata and list(loaded.metadata["class_names"]) != list(data.test.class_names):
        return  # another label space: its accuracy on these labels means nothing
    logits, labels = predict(loaded.model, BatchIterator(data.test, 512))
    note(f"teacher {loaded.path}: {accuracy(logits, labels):.2%} test accuracy on this data")
