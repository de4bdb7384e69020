from services.gateway.service import GatewayService
from services.settings import KNOWN
from shared.service import run

if __name__ == "__main__":
    run(GatewayService, KNOWN)
