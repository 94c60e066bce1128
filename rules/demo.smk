rule make_demo_data:
    output:
        **demo_outputs(),
    log:
        "logs/make_demo_data/make_demo_data.log",
    benchmark:
        "results/benchmarks/make_demo_data/make_demo_data.tsv"
    # priorities follow the slide path, the longest chain: demo data, tiling, extraction,
    # the fused models; the tile path and the baselines fill the gaps
    priority: 3
    conda:
        "../envs/shazam.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        version=SHAZAM_VERSION,
        out=lambda wildcards, output: os.path.dirname(output.sheet),
        seed=DEMO["seed"],
        cases=DEMO["cases"],
    shell:
        "shazam demo --out {params.out} --seed {params.seed} --cases {params.cases}"
        " --workers {threads} > {log} 2>&1"


rule make_demo_tiles:
    output:
        **demo_tile_outputs(),
    log:
        "logs/make_demo_tiles/make_demo_tiles.log",
    benchmark:
        "results/benchmarks/make_demo_tiles/make_demo_tiles.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        version=SHAZAM_VERSION,
        out=lambda wildcards, output: os.path.splitext(output.table)[0],
        seed=DEMO["seed"],
        cases=DEMO["tile_cases"],
    shell:
        "shazam demo-tiles --out {params.out} --seed {params.seed} --cases {params.cases}"
        " > {log} 2>&1"


# the demo's external cohort (demo.external_cases): another seed, one blank case
if DEMO_EXTERNAL:

    rule make_demo_external:
        output:
            sheet=f"{DEMO_EXTERNAL_DIR}/slides.tsv",
            labels=[
                f"{DEMO_EXTERNAL_DIR}/labels_subtype.csv",
                f"{DEMO_EXTERNAL_DIR}/labels_os.csv",
            ],
            slides=[f"{DEMO_EXTERNAL_DIR}/slides/{s.filename}" for s in DEMO_EXTERNAL],
        log:
            "logs/make_demo_data/make_demo_external.log",
        benchmark:
            "results/benchmarks/make_demo_data/make_demo_external.tsv"
        conda:
            "../envs/shazam.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=15,
        params:
            version=SHAZAM_VERSION,
            out=lambda wildcards, output: os.path.dirname(output.sheet),
            seed=DEMO["external_seed"],
            cases=DEMO["external_cases"],
        shell:
            "shazam demo --external --out {params.out} --seed {params.seed}"
            " --cases {params.cases} > {log} 2>&1"


if DEMO_EXTERNAL_TILES:

    rule make_demo_external_tiles:
        output:
            table=f"{DEMO_EXTERNAL_DIR}/tiles.csv",
            images=[
                f"{DEMO_EXTERNAL_DIR}/tiles/{t.image_id}"
                for t in demo_tiles_plan(
                    DEMO["external_seed"],
                    DEMO["external_tile_cases"],
                    prefix="roi_ext",
                )
            ],
        log:
            "logs/make_demo_tiles/make_demo_external_tiles.log",
        benchmark:
            "results/benchmarks/make_demo_tiles/make_demo_external_tiles.tsv"
        conda:
            "../envs/shazam.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            version=SHAZAM_VERSION,
            out=lambda wildcards, output: os.path.splitext(output.table)[0],
            seed=DEMO["external_seed"],
            cases=DEMO["external_tile_cases"],
        shell:
            "shazam demo-tiles --out {params.out} --seed {params.seed} --cases {params.cases}"
            " --prefix roi_ext > {log} 2>&1"
