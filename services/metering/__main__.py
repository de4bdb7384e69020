from services.metering.service import MeteringService
from services.settings import KNOWN
from shared.service import run

if __name__ == "__main__":
    run(MeteringService, KNOWN)
