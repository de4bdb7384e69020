from services.metering.service import MeteringService, MeteringSettings
from shared.service import run

if __name__ == "__main__":
    run(MeteringService, MeteringSettings)
