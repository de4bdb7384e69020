from services.gateway.service import GatewayService
from services.gateway.settings import GatewaySettings
from shared.service import run

if __name__ == "__main__":
    run(GatewayService, GatewaySettings)
