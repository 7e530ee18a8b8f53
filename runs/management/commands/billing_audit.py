import sys

from django.core.management.base import BaseCommand, CommandError

from billing.periods import parse_period
from runs.audit import audit


class Command(BaseCommand):
    help = "Check the billing invariants (ledger, counters, reservations); exit 1 on any mismatch."

    def add_arguments(self, parser):
        parser.add_argument("--period", help="YYYY-MM; default: every period")

    def handle(self, period=None, **options):
        try:
            month = parse_period(period) if period else None
        except ValueError:
            raise CommandError(f"--period is YYYY-MM, not {period!r}")
        summary, problems = audit(month)
        self.stdout.write(" ".join(f"{k}={v}" for k, v in summary.items()))
        for problem in problems:
            self.stdout.write(f"MISMATCH {problem}")
        if problems:
            self.stdout.write(f"billing audit FAILED: {len(problems)} mismatch(es)")
            sys.exit(1)
        self.stdout.write("billing audit OK")
