include $(sort $(wildcard $(BR2_EXTERNAL_GENBA_PATH)/package/*/*.mk))
