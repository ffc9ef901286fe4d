"""``falsedemo wrap``: false-demonstration task configs for any multiple-choice lm-eval task.

``falsedemo wrap TASK [TASK ...] --output_dir DIR [--include_path ...]`` writes ``falsedemo_<task>_<setting>.yaml``
for every setting of the corruption registry, and one group per setting; then
``lm_eval --include_path DIR --tasks falsedemo_<task>_permuted ...`` or ``falsedemo sweep --include_path DIR ...``
run them (:mod:`lm_eval_false_demos.integrations.wrap_configs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lm_eval_false_demos.core.corruption import SETTINGS
from lm_eval_false_demos.core.files import check_output_folder
from lm_eval_false_demos.core.task_names import task_name
from lm_eval_false_demos.errors import FalseDemoError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tasks", nargs="+", metavar="TASK",
                        help="lm-eval task names or globs (built in, or from --include_path); multiple_choice only")
    parser.add_argument("--output_dir", required=True, help="folder for the generated task YAMLs")
    parser.add_argument("--include_path", nargs="+", default=None, metavar="<dir>",
                        help="folders of your own task YAMLs, as in lm_eval")
    parser.add_argument("--name", default=None,
                        help="the <task> in falsedemo_<task>_<setting> (one task only; default: its own name)")
    parser.add_argument("--group", default="wrapped",
                        help="the <group> in the groups falsedemo_<group>_<setting> over every wrapped task")
    parser.add_argument("--num_fewshot", type=int, default=None,
                        help="k written into the configs (default: the original's; --num_fewshot at run time wins)")
    parser.add_argument("--sampler", default="task", choices=("task", "class_uniform"),
                        help="demonstrations from the original's sampler, reseeded per query (default), or the "
                             "paper's class-uniform draw (fixed label sets)")
    parser.add_argument("--doc_id", default=None, metavar="<field>",
                        help="a document field that identifies it (default: the sha256 of its content)")
    parser.add_argument("--stream_key", default=None, metavar="<key>",
                        help="the key of the seeded demonstration and corruption streams (default: the task name)")


def run(args: argparse.Namespace) -> int:
    from lm_eval_false_demos.integrations import wrap_configs

    options = wrap_configs.WrapOptions(name=args.name, group=args.group, num_fewshot=args.num_fewshot,
                                       sampler=args.sampler, doc_id=args.doc_id, stream_key=args.stream_key)
    wrap_configs.check_options(args.tasks, options)
    output_dir = check_output_folder(args.output_dir, flag="--output_dir").resolve()
    include = [path for path in (args.include_path or []) if Path(path).resolve() != output_dir]
    for path in include:
        if not Path(path).is_dir():
            raise FalseDemoError(f"--include_path {path!r} is not a folder")

    from lm_eval.tasks import TaskManager

    from lm_eval_false_demos._hook import task_config_dir

    # lm-eval's built-ins, ours (names a wrapped task must not take) and the user's folders
    task_manager = TaskManager(include_path=[task_config_dir(), *include])
    plans = wrap_configs.plan(args.tasks, task_manager, options, output_dir)
    written = wrap_configs.write(plans, options, output_dir)
    for item in plans:
        labels = f"labels {list(item.label_set)}" if item.label_set else "per-document choices"
        pool = (f"pool {item.pool_docs} / queries {item.eval_docs} (a seeded half of its evaluation split each)"
                if item.partitioned else f"pool {item.pool_docs}, queries {item.eval_docs}")
        print(f"{item.original} -> falsedemo_{item.name}_<{'|'.join(SETTINGS)}>: {labels}; {pool}")
    print(f"wrote {len(written)} task YAMLs to {output_dir}; groups {task_name(options.group, '<setting>')}")
    example = task_name(plans[0].name, "permuted")
    print(f"run: lm_eval --include_path {output_dir} --tasks {example} --model hf-earlyexit ...  |  "
          f"falsedemo sweep --include_path {output_dir} --tasks {task_name(plans[0].name, 'correct')},{example} ...")
    return 0
