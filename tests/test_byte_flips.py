"""Byte flips: single-byte mutations of small Keras weight files, each loaded
through both loaders (Model.load_weights by position, load_by_name) in a child
process.  Every load must end in one of three ways:

    refused    a WeightsFileError, and the model exactly as it was
    same       a clean load, with the weights that were written
    different  a clean load, with other (finite) weights: HDF5 keeps no checksum
               on raw data, so a flip there goes unnoticed (an MD5 check of the
               whole file, as downloads get, is what catches it)

and never in another exception, a crash or a hang; the mutated file is never
changed.  One child loads many files, each under a 10 s alarm, and reports one
JSON line per file; a child that crashes or stops answering has the mutation it
was on retried alone in a fresh child, whose outcome is recorded.

Run this file as a script (``python tests/test_byte_flips.py JOB``) to be the child.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import threading

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ALARM_S = 10                      # one load, in the child
SILENCE_S = 30                    # a child that says nothing for this long is stuck
GOOD = ("refused", "same", "different")


# --- the child ------------------------------------------------------------------------------
class Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise Hang()


def child(job_path):
    """Load each mutation of the job's file through both loaders; one JSON line each."""
    import keras_files
    from minires.io.keras_h5 import WeightsFileError, load_by_name
    job = json.load(open(job_path))
    original = open(job["original"], "rb").read()
    model = keras_files.small_model()
    start = [np.array(w) for w in model.get_weights()]
    model.load_weights(job["original"])
    written = [np.array(w) for w in model.get_weights()]
    loaders = {"by position": lambda path: model.load_weights(path),
               "by name": lambda path: load_by_name(model, path)}
    signal.signal(signal.SIGALRM, _on_alarm)
    for index, offset, value in job["mutations"]:
        data = bytearray(original)
        data[offset] = value
        path = os.path.join(job["folder"], f"m{index}.h5")
        with open(path, "wb") as handle:
            handle.write(data)
        outcomes = {}
        for name, load in loaders.items():
            model.set_weights(start)
            signal.alarm(ALARM_S)
            try:
                load(path)
                after = model.get_weights()
                if not all(np.isfinite(w).all() for w in after):
                    outcome = "loaded non-finite weights"
                elif all(np.array_equal(a, b) for a, b in zip(after, written)):
                    outcome = "same"
                else:
                    outcome = "different"
            except WeightsFileError:
                unchanged = all(np.array_equal(a, b) for a, b in zip(start, model.get_weights()))
                outcome = "refused" if unchanged else "refused after changing the model"
            except Hang:
                outcome = f"hang (over {ALARM_S} s)"
            except Exception as error:  # noqa: BLE001 - what this test looks for
                outcome = f"{type(error).__name__}: {error}"
            finally:
                signal.alarm(0)
            outcomes[name] = outcome
        if open(path, "rb").read() != bytes(data):
            outcomes["file"] = "changed by a load"
        os.remove(path)
        print(json.dumps([index, outcomes]), flush=True)


# --- the parent -----------------------------------------------------------------------------
def _run_child(original, mutations, folder):
    """{index: outcomes} for the mutations this child finished, and the first index
    it did not (None if it finished them all) with what happened to the child."""
    job = os.path.join(folder, "job.json")
    with open(job, "w") as handle:
        json.dump({"original": str(original), "folder": str(folder), "mutations": mutations}, handle)
    stderr = open(os.path.join(folder, "stderr.txt"), "w+")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), job], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=dict(os.environ, PYTHONPATH=HERE))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    done, failure = {}, None
    while True:
        try:
            line = lines.get(timeout=SILENCE_S)
        except queue.Empty:
            proc.kill()
            failure = f"hang (child silent for {SILENCE_S} s)"
            break
        if line is None:
            code = proc.wait()
            if len(done) < len(mutations):
                stderr.seek(0)
                failure = f"crash (exit code {code}): {stderr.read()[-300:]}"
            break
        index, outcomes = json.loads(line)
        done[index] = outcomes
    proc.wait()
    stderr.close()
    stuck = next((m[0] for m in mutations if m[0] not in done), None)
    return done, stuck, failure


def flip_outcomes(original, mutations, folder):
    """{index: {loader: outcome}} for every mutation, crashes and hangs included."""
    results, pending = {}, list(mutations)
    while pending:
        done, stuck, failure = _run_child(original, pending, folder)
        results.update(done)
        if stuck is not None:
            alone = [m for m in pending if m[0] == stuck]
            for _ in range(3):                   # killed from outside (SIGTERM, SIGKILL): again
                again, _, failure_alone = _run_child(original, alone, folder)
                killed = (failure_alone or "").startswith(("crash (exit code -15)",
                                                           "crash (exit code -9)"))
                if stuck in again or not killed:
                    break
            results[stuck] = again.get(stuck) or {"child": failure_alone or failure}
        pending = [m for m in pending if m[0] not in results]
    return results


def mutations_of(path, count, seed):
    """``count`` (index, offset, new byte) with distinct offsets, spread over the whole file."""
    data = open(path, "rb").read()
    rng = np.random.default_rng(seed)
    offsets = sorted(rng.choice(len(data), size=min(count, len(data)), replace=False).tolist())
    return [[i, offset, data[offset] ^ int(rng.integers(1, 256))] for i, offset in enumerate(offsets)]


def tally(results):
    counts = {}
    for outcomes in results.values():
        for name, outcome in outcomes.items():
            key = (name, outcome if outcome in GOOD else "OTHER")
            counts[key] = counts.get(key, 0) + 1
    return counts


def check(results, label):
    bad = {index: outcomes for index, outcomes in results.items()
           if set(outcomes) != {"by position", "by name"}
           or any(outcome not in GOOD for outcome in outcomes.values())}
    counts = tally(results)
    print(f"\n{label}: {len(results)} mutations; " + ", ".join(
        f"{name} {outcome} {n}" for (name, outcome), n in sorted(counts.items())))
    assert not bad, f"{label}: {len(bad)} bad outcomes, e.g. {list(bad.items())[:5]}"
    return counts


def test_byte_flips_of_a_keras_layout_file(tmp_path):
    import keras_files
    original = tmp_path / "small.h5"
    keras_files.write_small_file(original, as_bytes=True)       # Keras 2's bytes attributes
    mutations = mutations_of(original, 300, seed=0)
    counts = check(flip_outcomes(original, mutations, tmp_path), f"keras_files layout, "
                                                                f"{os.path.getsize(original)} bytes")
    assert len(mutations) == 300
    assert counts.get(("by name", "refused"), 0) > 0 and counts.get(("by name", "different"), 0) > 0


def test_byte_flips_of_a_file_keras_wrote(tmp_path):
    """Keras 3's own save_weights ('.weights.h5'); skipped where Keras is absent."""
    import pytest
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    import keras_files
    keras.backend.clear_session()
    theirs = keras_files.small_model(keras.layers, keras.Model)
    ours = keras_files.small_model()
    weights = keras_files.random_weights(ours, np.random.default_rng(1))
    theirs.set_weights([weights[layer.name][slot] for layer, slot in ours.parameters(trainable_only=False)])
    original = tmp_path / "small.weights.h5"
    theirs.save_weights(str(original))
    check(flip_outcomes(original, mutations_of(original, 150, seed=1), tmp_path),
          f"Keras 3 .weights.h5, {os.path.getsize(original)} bytes")


if __name__ == "__main__":
    child(sys.argv[1])
