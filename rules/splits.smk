# One make_splits_<task> rule per task (slide or tile), and one more per further repetition of
# its cross-validation (training.seeds): a task's fold count fixes each rule's outputs, and a
# new seed adds a rule without touching the folds that exist.
for task, repeat in ((t, r) for t in TASKS for r in range(len(SEEDS))):
    suffix = f"_repeat{repeat}" if repeat else ""
    k = task_folds(task)

    rule:
        name:
            f"make_splits_{task}{suffix}"
        input:
            source=task_source(task),
            slides=task_sheet(task),
            imported=task_split_inputs(task),
        output:
            folds=[layout.FOLD.format(task=task, fold=repeat * k + j) for j in range(k)],
            summary=f"{layout.SPLITS_DIR.format(task=task)}/{summary_name(repeat)}",
        log:
            f"logs/make_splits/{task}{suffix}.log",
        benchmark:
            f"results/benchmarks/make_splits/{task}{suffix}.tsv"
        # a split of a second unlocks every training job of the task: never let it wait
        priority: 2
        localrule: True
        conda:
            "../envs/shazam.yaml"
        params:
            version=SHAZAM_VERSION,
            spec=task_spec_json(task),
            slides=lambda wildcards, input: (
                f"--slides {input.slides}" if input.slides else ""
            ),
            out_dir=lambda wildcards, output: os.path.dirname(output.summary),
            repeat=repeat,
        shell:
            "shazam splits --spec {params.spec:q} {params.slides}"
            " --out-dir {params.out_dir} --repeat {params.repeat} > {log} 2>&1"
