# One make_splits_<task> rule per task: a task's fold count fixes its output files.
# (Tile-level tasks get theirs in rules/tiles.smk.)
for task in SLIDE_TASKS:

    rule:
        name:
            f"make_splits_{task}"
        input:
            labels=config["tasks"][task]["labels"],
            slides=config["slides"],
            imported=task_split_inputs(task),
        output:
            folds=expand(
                f"results/splits/{task}/fold_{{k}}.csv",
                k=range(config["tasks"][task]["folds"]),
            ),
            summary=f"results/splits/{task}/summary.tsv",
        log:
            f"logs/make_splits/{task}.log",
        benchmark:
            f"results/benchmarks/make_splits/{task}.tsv"
        localrule: True
        conda:
            "../envs/shazam.yaml"
        params:
            version=SHAZAM_VERSION,
            spec=task_spec_json(task),
            out_dir=lambda wildcards, output: os.path.dirname(output.summary),
        shell:
            "shazam splits --spec {params.spec:q} --slides {input.slides}"
            " --out-dir {params.out_dir} > {log} 2>&1"
