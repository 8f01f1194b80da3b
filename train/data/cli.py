"""`reverie data`: inspect (info) and verify (check) a directory of episode files (train/data/episodes.py), turn
gameplay video plus an input log into episode files (import: train/data/importer.py), and fill in the actions of
episodes
recorded without inputs with an inverse-dynamics model (label: train/data/label.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from train.data.episodes import SUFFIX, TMP_SUFFIX, Episode, EpisodeError


def _files(target: Path) -> tuple[list[Path], list[Path]]:
    """Episode files and leftover temporary files of a directory (or one file)."""
    if target.is_dir():
        return sorted(target.glob("*" + SUFFIX)), sorted(target.glob("*" + SUFFIX + TMP_SUFFIX))
    return [target], []


def _count(n: int, noun: str) -> str:
    """'1 episode', '2 episodes'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _summary(values: list[int]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    return {"min": v[0], "median": v[len(v) // 2], "mean": round(sum(v) / len(v), 1), "max": v[-1]}


def info(target: Path, as_json: bool) -> int:
    """Print counts, env ids, shapes, action specs, bytes, lengths and label sources of the episodes under target.

    The label source is the metadata's "labels" ("recorded" where it has none: the inputs were logged); the mean
    confidence is that of the IDM-labeled episodes (their metadata's, weighted by actions: no chunk is read). The
    reward sum and how the episodes ended come from the footers of files that record them (format 3 with rewards);
    the others are counted as reward unknown, by why (a format 1/2 file, or not recorded)."""
    files, tmps = _files(target)
    lengths, envs, shapes, specs, bad = [], Counter(), Counter(), {}, []
    total_bytes = 0
    compressions, labels, versions = Counter(), Counter(), Counter()
    confidence_sum, confidence_actions = 0.0, 0
    rewards, ends, unknown = [], Counter(), Counter()
    for path in files:
        try:
            with Episode(path) as ep:
                lengths.append(len(ep))
                version = ep.header.get("env_version")   # none for imported video and dreams: no game made them
                envs[f"{ep.env_id} (version {version})" if version else ep.env_id] += 1
                shapes["x".join(map(str, ep.frame_shape))] += 1
                specs[json.dumps(ep.spec.to_dict(), sort_keys=True)] = ep.spec.to_dict()
                compressions[ep.compression] += 1
                total_bytes += ep.file_size
                labels[str(ep.metadata.get("labels", "recorded"))] += 1
                versions[f"v{ep.version}"] += 1
                mean = ep.metadata.get("mean_confidence")
                if ep.has_confidence and isinstance(mean, (int, float)) and not isinstance(mean, bool):
                    confidence_sum += float(mean) * ep.num_actions
                    confidence_actions += ep.num_actions
                if ep.has_reward:
                    rewards.append(ep.reward_sum)
                    ends[ep.end] += 1
                else:
                    unknown["format 1/2 file" if ep.version < 3 else "not recorded"] += 1
        except (EpisodeError, OSError) as e:
            bad.append({"file": path.name, "error": str(e)})
    report = {"path": str(target), "episodes": len(lengths), "frames": sum(lengths),
              "actions": sum(lengths) - len(lengths), "env_ids": dict(envs), "frame_shapes": dict(shapes),
              "action_specs": list(specs.values()), "compression": dict(compressions), "bytes": total_bytes,
              "episode_frames": _summary(lengths), "labels": dict(labels),
              "mean_label_confidence": confidence_sum / confidence_actions if confidence_actions else None,
              "format_versions": dict(versions),
              "reward": {"episodes": len(rewards), "sum": sum(rewards), "episode_reward": _summary(rewards),
                         "ends": dict(ends), "unknown": dict(unknown)},
              "bad_files": bad, "incomplete_files": [p.name for p in tmps]}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{target}: {_count(report['episodes'], 'episode')}, {_count(report['frames'], 'frame')}, "
              f"{_count(report['actions'], 'action')}, {total_bytes / 1e6:.1f} MB on disk")
        print(f"  env ids:      {', '.join(f'{k} x{v}' for k, v in envs.items()) or '-'}")
        print(f"  frame shape:  {', '.join(f'{k} x{v}' for k, v in shapes.items()) or '-'}")
        for spec in specs.values():
            axes = f", axes {spec['axes']}" if spec["axes"] else ""
            print(f"  action spec:  {spec['game']} v{spec['version']}: buttons {spec['buttons']}{axes}")
        print(f"  compression:  {', '.join(f'{k} x{v}' for k, v in compressions.items()) or '-'}")
        sure = (f" (mean confidence {report['mean_label_confidence']:.3f} over {confidence_actions} IDM-read actions)"
                if confidence_actions else "")
        print(f"  labels:       {', '.join(f'{k} x{v}' for k, v in labels.items()) or '-'}{sure}")
        if rewards:
            r = report["reward"]["episode_reward"]
            print(f"  reward:       sum {sum(rewards):g} over {_count(len(rewards), 'episode')} (per episode: min "
                  f"{r['min']:g}, mean {r['mean']:g}, max {r['max']:g}); ended: "
                  + ", ".join(f"{k} x{v}" for k, v in ends.items()))
        for why, n in unknown.items():
            print(f"  reward:       unknown ({why})" + (f" x{n}" if rewards or len(unknown) > 1 else ""))
        s = report["episode_frames"]
        if s:
            print(f"  frames/episode: min {s['min']}, median {s['median']}, mean {s['mean']}, max {s['max']}")
        if len(shapes) > 1 or len(specs) > 1:
            print("  note: mixed frame shapes or action specs; one training dataset needs one of each")
        for b in bad:
            print(f"  BAD {b['file']}: {b['error']}")
        for p in tmps:
            print(f"  INCOMPLETE {p.name}: left by a recorder that did not finish")
    return 1 if bad or not files else 0


def check(target: Path, quiet: bool) -> int:
    """Verify every checksum of every episode file; report every bad and every incomplete file."""
    files, tmps = _files(target)
    n_bad = 0
    frames = 0
    for path in files:
        try:
            with Episode(path) as ep:
                ep.verify()
                frames += len(ep)
        except EpisodeError as e:
            n_bad += 1
            print(f"BAD         {path.name}: {e}")
            continue
        except Exception as e:  # a checker reports every file, whatever went wrong with one of them
            n_bad += 1
            print(f"BAD         {path.name}: {path}: {type(e).__name__}: {e}")
            continue
        if not quiet:
            print(f"ok          {path.name} ({len(ep)} frames)")
    for path in tmps:
        n_bad += 1
        print(f"INCOMPLETE  {path.name}: an unfinished episode (the recorder was killed or failed); delete it "
              "or re-record")
    if not files and not tmps:
        print(f"reverie data check: no *{SUFFIX} files in {target}", file=sys.stderr)
        return 1
    status = "all ok" if not n_bad else f"{n_bad} bad"
    print(f"{target}: {_count(len(files), 'episode file')}, {_count(frames, 'frame')} checked, {status}")
    return 1 if n_bad else 0


def build_parser() -> argparse.ArgumentParser:
    from train.data import importer, label

    p = argparse.ArgumentParser(prog="reverie data", description="Inspect, verify, import and label episode files.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{info,check,import,label}")
    i = sub.add_parser("info", help="counts, env ids, frame shape, action spec, bytes, episode lengths")
    i.add_argument("path", type=Path, help=f"directory of *{SUFFIX} files, or one file")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    c = sub.add_parser("check", help="verify every checksum; non-zero exit if any file is bad or incomplete")
    c.add_argument("path", type=Path, help=f"directory of *{SUFFIX} files, or one file")
    c.add_argument("-q", "--quiet", action="store_true", help="print only bad files and the summary")
    importer.add_flags(sub.add_parser("import", help=importer.HELP, description=importer.__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter))
    label.add_flags(sub.add_parser("label", help=label.HELP, description=label.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.command == "import":
        from train.data import importer

        return importer.run(a)
    if a.command == "label":
        from train.data import label

        return label.run(a)
    if not a.path.exists():
        print(f"reverie data {a.command}: error: {a.path}: no such file or directory", file=sys.stderr)
        return 2
    try:
        return info(a.path, a.json) if a.command == "info" else check(a.path, a.quiet)
    except BrokenPipeError:   # stdout's reader left (`| head`): the command's business, not a file error
        raise
    except OSError as e:
        print(f"reverie data {a.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
