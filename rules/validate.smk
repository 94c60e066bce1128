# Known-answer validation on synthetic feature-level cohorts (not part of `rule all`):
# `snakemake validate`. The job fails when any expectation is not met; the table is in the log.
rule validate:
    output:
        layout.VALIDATE_SUMMARY,
    log:
        "logs/validate/validate.log",
    benchmark:
        "results/benchmarks/validate/validate.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        version=SHAZAM_VERSION,
        out=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "shazam validate --out {params.out} --threads {threads} > {log} 2>&1"
