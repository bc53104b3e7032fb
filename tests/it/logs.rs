// placeholder until the logs tests land
