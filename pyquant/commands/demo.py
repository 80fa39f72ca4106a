"""`pyquant demo`: placeholder until the demo pipeline lands."""
HELP = "run the whole evaluation on the bundled SmolLM2-135M and write demo-output/report.html"


def add_arguments(p):
    pass


def run(args) -> int:
    print("pyquant demo: not yet available")
    return 0
